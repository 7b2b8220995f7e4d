"""Tennessee Eastman: a chemical plant under Ricker's decentralised PI control (``tep-studio``).

The embodiment ``tennessee-eastman``:

- state: the 41 online measurements (XMEAS 1..41), names and units from ``tep_studio``'s schema;
- action: the 12 manipulated variables (XMV 1..12), valve positions in percent, [0, 100]
  (the simulator clamps to that range);
- control rate: one simulator step of 0.0005 h = 1.8 s (the PI controller's sample period,
  and the simulator's integration step), i.e. 1/1.8 Hz.

The simulator publishes no measurement ranges, so we give each measurement an instrument
range (see :func:`measurement_limits`): levels 0..100 % (the simulator's shutdown limits),
pressures 0..4000 kPa (the reactor trips at 3000, the stripper runs near 3100), temperatures
0..200 degC (the reactor trips at 175), compositions -5..100 mol %, and flows and power from
-5 % to 5 times their base-case value rounded up to 1, 2, 2.5 or 5 times a power of ten; the
small negative margin holds readings near zero that the simulator's own measurement noise
pushes below it. Closed-loop runs of every disturbance IDV 1..20 stay within these ranges.

Scenarios (the "tasks" of this machine), each an episode of ``DEFAULT_HOURS`` hours:

- ``base``: hold the Mode-1 base operating point (the default);
- set-point changes, applied from the start of the episode and named in the task text:
  ``production-down``/``production-up`` (production rate -/+2 %; the controller ramps
  production at 0.29 m3/h per hour, so a larger step would not finish within an episode),
  ``pressure-down``
  (reactor pressure -60 kPa), ``reactor-level-down`` (-10 points), ``stripper-level-up``
  (+10 points), ``separator-level-down`` (-10 points);
- ``idv-1`` .. ``idv-20``: the base case with disturbance IDV(n) switched on partway, at a
  time drawn per episode uniformly in [25 %, 50 %] of the episode. Disturbances come
  unannounced, so their task text is the base case's; the per-frame ``fault`` column (int64,
  0 = none, else n) labels them.

Per frame: ``next.reward`` is minus the plant's operating cost over the step (dollars,
``tep_studio``'s internal cost rate times the step), ``next.success`` says the plant is inside
all its operating constraints after the step (no shutdown, no limit crossed), and an episode
ends early, with ``next.done``, if the plant shuts down. The simulator's own measurement noise
and random disturbances are seeded per episode.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from onshore.errors import ValidationError
from onshore.sim.policy import Policy
from onshore.sim.rollout import EpisodeSpec, Step
from onshore.telemetry.embodiment import Channel, Embodiment

EMBODIMENT = "tennessee-eastman"
#: Heavy modules a worker process needs: the forkserver imports them once (``map_ordered``'s preload).
PRELOAD: tuple[str, ...] = ("tep_studio",)
SIM_STEP_H = 0.0005  # hours per simulator step (= the PI loops' sample period)
DEFAULT_HOURS = 2.0
DEFAULT_TASKS: tuple[str, ...] = ("base",)
BASE_TEXT = "hold the base operating point"

#: Set-point scenarios: name -> (task text, ControllerSetpoints field, change, relative?)
SETPOINT_SCENARIOS: dict[str, tuple[str, str, float, bool]] = {
    "production-down": ("lower the production rate set-point by 2 percent", "production_rate", -0.02, True),
    "production-up": ("raise the production rate set-point by 2 percent", "production_rate", 0.02, True),
    "pressure-down": ("lower the reactor pressure set-point by 60 kPa", "reactor_pressure", -60.0, False),
    "reactor-level-down": ("lower the reactor level set-point by 10 percent points", "reactor_level", -10.0, False),
    "stripper-level-up": ("raise the stripper level set-point by 10 percent points", "stripper_level", 10.0, False),
    "separator-level-down": ("lower the separator level set-point by 10 percent points",
                             "separator_level", -10.0, False),
}
FAULTS = range(1, 21)
FAULT_ONSET = (0.25, 0.50)  # fraction of the episode in which a disturbance switches on


def all_tasks() -> list[str]:
    """Every scenario name: ``base``, the set-point changes, ``idv-1`` .. ``idv-20``."""
    return ["base", *SETPOINT_SCENARIOS, *(f"idv-{n}" for n in FAULTS)]


def check_tasks(tasks: list[str]) -> list[str]:
    """Return ``tasks`` if all are scenario names; else raise ``ValidationError``."""
    known = all_tasks()
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ValidationError(f"unknown Tennessee Eastman scenario(s) {', '.join(bad)}; "
                              f"choose from {', '.join(known)}")
    return list(tasks)


def fault_of(task: str) -> int:
    """The IDV number a scenario switches on (0 for none)."""
    return int(task.split("-", 1)[1]) if task.startswith("idv-") else 0


def task_text(task: str) -> str:
    """The plain-text instruction of a scenario (disturbance scenarios read as the base case)."""
    if task in SETPOINT_SCENARIOS:
        return SETPOINT_SCENARIOS[task][0]
    return BASE_TEXT


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= x (x > 0)."""
    exp = math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * 10.0**exp >= x * (1 - 1e-12):
            return m * 10.0**exp
    return 10.0 ** (exp + 1)  # pragma: no cover - the loop always returns


def measurement_limits(unit: str, base: float) -> tuple[float, float]:
    """The instrument range of one measurement, from its unit and its base-case value."""
    if unit == "%":
        return 0.0, 100.0
    if unit.startswith("kPa"):
        return 0.0, 4000.0
    if unit == "degC":
        return 0.0, 200.0
    if unit == "mol %":
        return -5.0, 100.0
    high = _nice_ceil(5.0 * abs(base)) if base else 1.0
    return -0.05 * high, high


@lru_cache(maxsize=1)
def embodiment() -> Embodiment:
    """The ``tennessee-eastman`` embodiment; measurement ranges from the base case (see above)."""
    from tep_studio import TEP_SCHEMA, TennesseeEastmanProcess

    base, _ = TennesseeEastmanProcess().reset()
    state = []
    for v in TEP_SCHEMA.measurements:
        lo, hi = measurement_limits(v.unit, float(base[v.index]))
        state.append(Channel(v.name, v.unit, lo, hi))
    action = tuple(Channel(v.name, v.unit, float(v.lower), float(v.upper))
                   for v in TEP_SCHEMA.manipulated_variables)
    return Embodiment(
        name=EMBODIMENT,
        control_hz=1.0 / (SIM_STEP_H * 3600.0),
        state=tuple(state),
        action=action,
        description="Tennessee Eastman challenge process, modified model (Bathelt, Ricker, "
                    "Jelali 2015) via tep-studio; Mode 1 base case",
        extra={"groups": _state_groups([c.name for c in state])},
    )


def _state_groups(names: list[str]) -> dict[str, list[str]]:
    """The plant's units and analysers as groups (a model's stem makes one token of each)."""
    def unit(n: str) -> str:
        if n.endswith("_concentration"):
            return ("reactor_feed_analysis" if n.startswith("reactor_feed_") else
                    "purge_analysis" if n.startswith("purge_") else "product_analysis")
        if n.startswith("feed_") or n in ("recycle_flow", "reactor_feed_flow", "purge_flow"):
            return "feeds"
        for part in ("reactor", "separator", "stripper"):
            if n.startswith(part + "_"):
                return part
        return "separator" if n.startswith("condenser_") else "stripper" if n.startswith("compressor_") else "other"

    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(unit(n), []).append(n)
    return groups


def target_setpoints(task: str, initial: Any) -> Any:
    """The controller set-points a scenario asks for, from the ``initial`` ones."""
    if task not in SETPOINT_SCENARIOS:
        return initial
    _, field, change, relative = SETPOINT_SCENARIOS[task]
    value = getattr(initial, field)
    return dataclasses.replace(initial, **{field: value * (1 + change) if relative else value + change})


#: Controlled variables scored in evaluation: name -> (measurement index, set-point field)
CONTROLLED = {
    "reactor_pressure": (6, "reactor_pressure"),
    "reactor_level": (7, "reactor_level"),
    "reactor_temperature": (8, "reactor_temperature"),
    "separator_level": (11, "separator_level"),
    "stripper_level": (14, "stripper_level"),
    "production_rate": (16, "production_rate"),
}


def setpoint_targets(task: str, first_state: np.ndarray) -> dict[str, float]:
    """Set-point of each controlled variable in a scenario, given the episode's first state.

    The same rule the PI controller uses: hold what the plant reads at the start, then apply
    the scenario's change.
    """
    from tep_studio import ControllerSetpoints

    s = np.asarray(first_state, dtype=np.float64)
    initial = ControllerSetpoints(
        reactor_level=float(s[7]), reactor_pressure=float(s[6]), reactor_temperature=float(s[8]),
        separator_level=float(s[11]), stripper_level=float(s[14]), pct_g=float(s[39]),
        production_rate=float(s[16]), ya=0.0, yac=0.0)
    target = target_setpoints(task, initial)
    return {cv: float(getattr(target, field)) for cv, (_, field) in CONTROLLED.items()}


class TepExpert:
    """Ricker's decentralised PI controller (``tep_studio``) behind the :class:`Policy` protocol.

    It keeps its own clock by counting control steps of ``period_s`` seconds, reads its
    set-point change from the task text (an unknown text is refused), and seeds its loops
    bumplessly from the first state it sees.
    """

    def __init__(self, period_s: float = SIM_STEP_H * 3600.0) -> None:
        self.period_h = float(period_s) / 3600.0
        self._scenario = "base"
        self._ctl: Any = None
        self._steps = 0

    def reset(self, task: str) -> None:
        by_text = {text: name for name, (text, *_rest) in SETPOINT_SCENARIOS.items()}
        by_text[BASE_TEXT] = "base"
        if task not in by_text:
            raise ValidationError(f"the PI controller has no scenario for task {task!r}; "
                                  f"use one of: {', '.join(sorted(by_text))}")
        from tep_studio import RickerMultiLoopController

        self._scenario = by_text[task]
        # Overrides on: they keep the reactor below its 3000 kPa trip under large disturbances.
        self._ctl = RickerMultiLoopController(enable_overrides=True)
        self._steps = 0

    def act(self, state: np.ndarray) -> np.ndarray:
        t = self._steps * self.period_h
        if self._steps == 0:
            self._ctl.reset(state, time=t)
            self._ctl.setpoints = target_setpoints(self._scenario, self._ctl.setpoints)
        self._steps += 1
        action, _ = self._ctl.compute_action(state, time=t)
        return np.asarray(action, dtype=np.float64)


class TepEnv:
    """Adapter from ``tep_studio.TennesseeEastmanProcess`` to :class:`~onshore.sim.rollout.SimEnv`."""

    name = "tep"
    dt = SIM_STEP_H * 3600.0
    default_seconds = DEFAULT_HOURS * 3600.0
    extra_columns: dict[str, pa.DataType] = {"fault": pa.int64()}

    def __init__(self) -> None:
        from tep_studio import TennesseeEastmanProcess

        self._sim = TennesseeEastmanProcess()
        self._fault = 0
        self._onset_h = math.inf
        self._steps = 0

    def embodiment(self) -> Embodiment:
        return embodiment()

    def task_text(self, task: str) -> str:
        return task_text(task)

    def expert(self, period_s: float | None = None) -> Policy:
        return TepExpert(self.dt if period_s is None else period_s)

    def reset(self, spec: EpisodeSpec, seconds: float) -> tuple[np.ndarray, dict[str, int]]:
        check_tasks([spec.task])
        rng = np.random.default_rng([spec.episode_seed, 0x7E9])
        self._fault = fault_of(spec.task)
        hours = seconds / 3600.0
        self._onset_h = float(rng.uniform(*FAULT_ONSET)) * hours if self._fault else math.inf
        # The kernel's noise generator takes a positive double seed.
        noise_seed = float(1 + spec.episode_seed % 2_000_000_000)
        meas, _ = self._sim.reset(mode="mode1", seed=noise_seed)
        self._steps = 0
        return np.asarray(meas, dtype=np.float64), {"fault": 0}

    def step(self, action: np.ndarray) -> Step:
        t = self._steps * SIM_STEP_H
        idv = np.zeros(28)
        fault = 0
        if self._fault and t >= self._onset_h - 1e-12:
            idv[self._fault - 1] = 1.0
            fault = self._fault
        res = self._sim.advance(action, control_interval=SIM_STEP_H, disturbances=idv)
        self._steps += 1
        shutdown = bool(res.shutdown_status["terminated"])
        inside = not shutdown and min(res.constraint_margins.values()) >= 0.0
        cost = float(res.objective_terms["operating_cost_internal_per_hour"]) * SIM_STEP_H
        return Step(state=np.asarray(res.measurements, dtype=np.float64), reward=-cost,
                    success=inside, terminated=shutdown, extra={"fault": fault})
