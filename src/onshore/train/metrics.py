"""Training metrics: a CSV row per logged step, and a loss-curve PNG at the end.

On resume the CSV keeps the rows up to the checkpoint's step and continues, so a killed and
resumed run has the same file as one that was never interrupted (except wall-clock columns).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

COLUMNS = ("step", "loss", "action_loss", "world_loss", "heldout_loss", "heldout_action_loss",
           "lr", "grad_norm", "samples_per_s",
           "elapsed_s")


class MetricsLog:
    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = Path(path)
        kept: list[dict[str, str]] = []
        if resume_step > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(kept)

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})

    def rows(self) -> list[dict[str, float]]:
        with open(self.path, newline="") as f:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
                    for r in csv.DictReader(f)]


def plot_losses(rows: list[dict[str, float]], out: Path, title: str) -> Path:
    """Training (and held-out, if any) loss against step, log scale; matplotlib imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], label="training loss", lw=1.2)
    ax.plot(steps, [r["action_loss"] for r in rows], label="action (smooth-L1)", lw=0.8, alpha=0.7)
    held = [(r["step"], r["heldout_loss"]) for r in rows if not math.isnan(r["heldout_loss"])]
    if held:
        ax.plot(*zip(*held, strict=True), "o-", label="held-out loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(r["loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
