"""Evaluation reports: a JSON file and a PNG plot in the workspace's ``reports/`` folder.

The JSON holds the whole :class:`~onshore.eval.runner.Report`: environment and package
versions, the seed and every episode seed, the success definition, per-task numbers and each
episode's outcome, so a number in it can be reproduced with ``onshore eval`` and the same
seed. Plots use matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers without a display
import matplotlib.pyplot as plt  # noqa: E402

from onshore.errors import ValidationError  # noqa: E402
from onshore.eval.runner import Report  # noqa: E402


def report_stem(report: Report) -> str:
    """File name stem, e.g. ``eval-metaworld-expert-seed0``."""
    policy = re.sub(r"[^a-z0-9-]+", "-", report.policy.lower()).strip("-") or "policy"
    return f"eval-{report.env}-{policy}-seed{report.seed}"


def write_report(report: Report, reports_dir: Path) -> list[Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``reports_dir`` (created if missing).

    An existing report of the same env, policy and seed is replaced. Refused
    (``ValidationError``): ``reports_dir`` is a file.
    """
    reports_dir = Path(reports_dir)
    if reports_dir.exists() and not reports_dir.is_dir():
        raise ValidationError(f"{reports_dir} is a file; --reports must name a folder")
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(report)
    data = {"created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **report.to_dict()}
    json_path = reports_dir / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    png_path = reports_dir / f"{stem}.png"
    fig = _plot_tep(report) if report.env == "tep" else _plot_success(report)
    fig.savefig(png_path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return [json_path, png_path]


def _plot_success(report: Report):
    """Success rate per task with its 95 % Wilson interval."""
    tasks = report.tasks
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(tasks) + 1.6))
    y = range(len(tasks))
    rates = [t.success_rate for t in tasks]
    err = [[t.success_rate - t.ci95[0] for t in tasks], [t.ci95[1] - t.success_rate for t in tasks]]
    ax.barh(list(y), rates, xerr=err, color="#4c78a8", capsize=3)
    ax.set_yticks(list(y), [t.task for t in tasks])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("success rate (95 % Wilson interval)")
    ax.set_title(f"{report.env} · {report.policy} · {report.episodes_per_task} episodes/task · "
                 f"seed {report.seed}", fontsize=9)
    fig.tight_layout()
    return fig


def _plot_tep(report: Report):
    """Mean IAE per controlled variable and scenario: the policy against the PI controller."""
    cvs = list(report.tasks[0].metrics["iae"])
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    x = list(range(len(report.tasks)))
    for ax, cv in zip(axes.flat, cvs, strict=False):
        mine = [t.metrics["iae"][cv] for t in report.tasks]
        base = [(t.baseline or {}).get("iae", {}).get(cv, float("nan")) for t in report.tasks]
        ax.bar([i - 0.2 for i in x], mine, width=0.4, label=report.policy, color="#4c78a8")
        ax.bar([i + 0.2 for i in x], base, width=0.4, label="PI controller", color="#f58518")
        ax.set_xticks(x, [t.task for t in report.tasks], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"IAE {cv}", fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"tep · {report.policy} vs PI · {report.episodes_per_task} episodes/scenario · "
                 f"seed {report.seed}", fontsize=10)
    fig.tight_layout()
    return fig
