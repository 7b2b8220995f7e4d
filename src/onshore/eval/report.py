"""Evaluation reports: a JSON file and a PNG plot in the workspace's ``reports/`` folder.

The JSON holds the whole :class:`~onshore.eval.runner.Report`: environment and package
versions, the seed and every episode seed, the success definition, per-task numbers and each
episode's outcome, so a number in it can be reproduced with ``onshore eval`` and the same
seed. Plots are bare matplotlib Figures rendered by the Agg backend: no display is needed.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onshore.errors import ValidationError
from onshore.eval.runner import Report


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def report_stem(report: Report) -> str:
    """File name stem naming whose evaluation it is, e.g. ``eval-kansai-robotics-metaworld-expert-seed0``
    (``eval-metaworld-expert-seed0`` without a label)."""
    policy = _slug(report.policy) or "policy"
    label = _slug(report.label)
    return f"eval-{label + '-' if label else ''}{report.env}-{policy}-seed{report.seed}"


def report_title(report: Report) -> str:
    """The plot's title: whose evaluation, which env and policy, how many episodes, which seed."""
    who = f"{report.label} · " if report.label else ""
    per = "scenario" if report.env == "tep" else "task"
    return (f"{who}{report.env} · {report.policy} · {report.episodes_per_task} episodes/{per} · "
            f"seed {report.seed}")


def write_report(report: Report, reports_dir: Path) -> list[Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``reports_dir`` (created if missing).

    Nothing is replaced: when a report of the same label, env, policy and seed exists (a rerun),
    this one is ``<stem>-2``, ``-3``, ...; the name is claimed atomically, so two evaluations
    finishing at once get two names. Refused (``ValidationError``): ``reports_dir`` is a file.
    """
    reports_dir = Path(reports_dir)
    if reports_dir.exists() and not reports_dir.is_dir():
        raise ValidationError(f"{reports_dir} is a file; --reports must name a folder")
    reports_dir.mkdir(parents=True, exist_ok=True)
    data = {"created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **report.to_dict()}
    json_path = _claim(reports_dir, report_stem(report))
    tmp = json_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(json_path)  # the claimed (empty) name gets the whole report at once
    png_path = json_path.with_suffix(".png")
    fig = figure(report)
    fig.savefig(png_path, dpi=110, metadata={"Software": None})
    return [json_path, png_path]


def _claim(folder: Path, stem: str) -> Path:
    """The first free ``stem.json``, ``stem-2.json``, ... in ``folder``, created empty (exclusively)."""
    n = 1
    while True:
        path = folder / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            n += 1


def figure(report: Report) -> Any:
    """The report's plot as a matplotlib Figure (not attached to pyplot, so nothing to close)."""
    # matplotlib costs a third of a second to import: only the commands that plot pay for it.
    from matplotlib.figure import Figure

    return _plot_tep(Figure, report) if report.env == "tep" else _plot_success(Figure, report)


def _plot_success(Figure: Any, report: Report) -> Any:
    """Success rate per task with its 95 % Wilson interval."""
    tasks = report.tasks
    fig = Figure(figsize=(7, 0.45 * len(tasks) + 1.6))
    ax = fig.subplots()
    y = range(len(tasks))
    rates = [t.success_rate for t in tasks]
    err = [[t.success_rate - t.ci95[0] for t in tasks], [t.ci95[1] - t.success_rate for t in tasks]]
    ax.barh(list(y), rates, xerr=err, color="#4c78a8", capsize=3)
    ax.set_yticks(list(y), [t.task for t in tasks])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("success rate (fraction of episodes; whiskers: 95 % Wilson interval)")
    ax.set_ylabel("task")
    ax.set_title(report_title(report), fontsize=9)
    fig.tight_layout()
    return fig


def _plot_tep(Figure: Any, report: Report) -> Any:
    """Mean IAE per controlled variable and scenario; beside the PI controller's when it differs."""
    cvs = list(report.tasks[0].metrics["iae"])
    has_baseline = any(t.baseline for t in report.tasks)
    fig = Figure(figsize=(11, 6))
    axes = fig.subplots(2, 3)
    x = list(range(len(report.tasks)))
    width = 0.4 if has_baseline else 0.6
    for ax, cv in zip(axes.flat, cvs, strict=False):
        mine = [t.metrics["iae"][cv] for t in report.tasks]
        ax.bar([i - 0.2 for i in x] if has_baseline else x, mine, width=width, label=report.policy,
               color="#4c78a8")
        if has_baseline:
            base = [(t.baseline or {}).get("iae", {}).get(cv, float("nan")) for t in report.tasks]
            ax.bar([i + 0.2 for i in x], base, width=width, label="PI controller", color="#f58518")
        ax.set_xticks(x, [t.task for t in report.tasks], rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("scenario", fontsize=7)
        ax.set_ylabel(f"IAE ({report.units.get('iae.' + cv, 'unit·h')})", fontsize=7)
        ax.set_title(f"IAE {cv}", fontsize=9)
    if has_baseline:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(report_title(report) + (" · vs PI controller" if has_baseline else ""), fontsize=10)
    fig.tight_layout()
    return fig
