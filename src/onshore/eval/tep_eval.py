"""How a Tennessee Eastman episode is scored.

- integrated absolute error (IAE) of each controlled variable against its set-point, in the
  variable's unit times hours (tep-studio's convention), summed over frames as |x - sp| * dt;
  the set-points are the scenario's (see :func:`onshore.sim.tep.setpoint_targets`);
- constraint violations: frames after which the plant is outside an operating limit
  (reactor pressure above 3000 kPa, reactor temperature above 175 degC, a level outside
  0..100 %), i.e. frames whose ``next.success`` is false;
- shutdowns: the plant tripped before the end of the episode. An episode "succeeds" when it
  runs its full length without a shutdown.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onshore.sim import tep
from onshore.sim.rollout import EpisodeFrames

SUCCESS_DEFINITION = (
    f"the plant runs the full episode ({tep.DEFAULT_HOURS:g} h of simulated time, "
    "Mode 1 base case) without a shutdown; IAE is against the scenario's set-points, "
    "constraint violations count frames outside an operating limit"
)
AFTER_SUCCESS = None  # a plant is never "done": run the full episode


def iae_units() -> dict[str, str]:
    """The unit of each controlled variable's IAE: the variable's own unit times hours."""
    state = tep.embodiment().state
    return {cv: f"{state[idx].unit}·h" for cv, (idx, _field) in tep.CONTROLLED.items()}


def episode_metrics(ep: EpisodeFrames) -> dict[str, float]:
    """IAE per controlled variable, violation frames, shutdown (1.0/0.0) and its time."""
    targets = tep.setpoint_targets(ep.spec.task, ep.state[0])
    x = ep.state.astype(np.float64)
    # Each frame's state holds until the next one: weight it by the gap to the next timestamp.
    dt_h = np.diff(np.append(ep.timestamp, ep.timestamp[-1] + tep.SIM_STEP_H * 3600.0)) / 3600.0
    out: dict[str, float] = {}
    for cv, (idx, _field) in tep.CONTROLLED.items():
        out[f"iae.{cv}"] = float(np.sum(np.abs(x[:, idx] - targets[cv]) * dt_h))
    out["violation_frames"] = float(np.sum(~ep.success))
    out["shutdown"] = 1.0 if ep.terminated else 0.0
    out["hours"] = float(ep.timestamp[-1] + tep.SIM_STEP_H * 3600.0) / 3600.0
    return out


def task_metrics(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over a task's episodes: IAE per variable, violation frames; shutdown count."""
    keys = [k for k in episodes[0]["metrics"] if k.startswith("iae.")]
    return {
        "iae": {k[4:]: float(np.mean([e["metrics"][k] for e in episodes])) for k in keys},
        "mean_violation_frames": float(np.mean([e["metrics"]["violation_frames"] for e in episodes])),
        "shutdowns": int(sum(e["metrics"]["shutdown"] for e in episodes)),
        "mean_hours": float(np.mean([e["metrics"]["hours"] for e in episodes])),
    }
