"""How a Meta-World episode is scored."""

from __future__ import annotations

from typing import Any

import numpy as np

from onshore.sim.rollout import EpisodeFrames

SUCCESS_DEFINITION = (
    "Meta-World v3 info['success'] is true at some step within max_path_length (500 steps); "
    "the episode stops at the first success, as in Meta-World's own evaluation. Goals are "
    "MT1's: metaworld.MT1(task, seed) with the seed derived from (eval seed, task)."
)
AFTER_SUCCESS = 0  # stop on the first success frame


def episode_metrics(ep: EpisodeFrames) -> dict[str, float]:
    """Nothing beyond success, return and length for Meta-World."""
    return {}


def task_metrics(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task extras: median length of successful episodes (frames), if any succeeded."""
    ok = [e["length"] for e in episodes if e["success"]]
    return {"median_length_successful": float(np.median(ok)) if ok else None}
