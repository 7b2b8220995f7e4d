"""Meta-World v3: a Sawyer arm on a table, 50 manipulation tasks, scripted experts.

The embodiment ``sawyer-metaworld`` is shared by every task:

- state: Meta-World's 39-number observation: hand position (3), gripper opening (1), two
  object slots of position + quaternion (14), the same 18 numbers one step earlier (Meta-World
  frame-stacks them), and the goal position (3);
- action: hand displacement in x, y, z and gripper effort, each in [-1, 1] (Meta-World moves
  the hand's mocap target by ``action * 0.01 m`` per step);
- control rate: one simulator step, ``frame_skip * timestep`` = 12.5 ms, i.e. 80 Hz.

Limits come from the environment's observation and action spaces. Where those are infinite
(object positions and quaternions) or task-specific (the goal), we use fixed, finite limits
chosen to cover every v3 task: positions in the workspace box ``WORKSPACE_LOW..HIGH``
(metres; it contains the goal spaces of all 50 tasks, which span about x -0.5..0.51,
y 0.4..1.0, z -0.15..0.5), quaternion components in [-1, 1].

Goals vary by seed the way Meta-World's MT1 benchmark does it: ``metaworld.MT1(task, seed)``
samples 50 goals; episode ``i`` of a task uses goal ``i % 50`` of the MT1 set seeded from
(run seed, task, ``i // 50``), so a run of any length has no repeated goal within 50 episodes
and the same seed always gives the same goals. The goal is visible in the state, as in MT1.

Episodes end at the environment's ``max_path_length`` (500 steps, 6.25 s) or, when the caller
asks for it, a few frames after the expert first reaches a success state (generation: 10
frames, so the data also shows holding the goal; evaluation: on success, as Meta-World's own
evaluation does).
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from onshore.errors import ValidationError
from onshore.sim.policy import Policy
from onshore.sim.rollout import EpisodeSpec, Step
from onshore.telemetry.embodiment import Channel, Embodiment

EMBODIMENT = "sawyer-metaworld"

#: The MT10 tasks: the default task set for generation and evaluation.
DEFAULT_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

#: Heavy modules a worker process needs: the forkserver imports them once (``map_ordered``'s preload).
PRELOAD: tuple[str, ...] = ("mujoco", "metaworld", "metaworld.env_dict", "metaworld.policies")

WORKSPACE_LOW = (-1.0, -0.5, -0.5)
WORKSPACE_HIGH = (1.0, 1.5, 1.0)
AFTER_SUCCESS_FRAMES = 10  # frames kept after first success when generating telemetry
GOALS_PER_SET = 50  # Meta-World's MT1 samples this many goals per seed


def _quiet() -> None:
    # The scripted experts warn on every step whose gain saturates the action; the
    # environment clips it, so the warning is noise in a progress bar.
    warnings.filterwarnings("ignore", module=r"metaworld(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*Constant\(s\) may be too high.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"gymnasium(\..*)?$")


def all_tasks() -> list[str]:
    """Every Meta-World v3 task name, e.g. ``"pick-place-v3"``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def task_text(task: str) -> str:
    """The plain-text instruction for a task name: ``"pick-place-v3"`` -> ``"pick place"``."""
    base = task[: -len("-v3")] if task.endswith("-v3") else task
    return base.replace("-", " ")


def check_tasks(tasks: list[str]) -> list[str]:
    """Return ``tasks`` if all are Meta-World v3 task names; else raise ``ValidationError``."""
    known = all_tasks()
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ValidationError(
            f"unknown Meta-World task(s) {', '.join(bad)}; use v3 names such as "
            f"{', '.join(DEFAULT_TASKS[:3])} (all 50: {', '.join(known)})"
        )
    return list(tasks)


def _state_names() -> list[tuple[str, str]]:
    """(name, unit) of the 39 observation channels, in Meta-World's order."""
    def frame(prefix: str) -> list[tuple[str, str]]:
        out = [(f"{prefix}hand_{a}", "m") for a in "xyz"] + [(f"{prefix}gripper_open", "1")]
        for slot in (1, 2):
            out += [(f"{prefix}obj{slot}_{a}", "m") for a in "xyz"]
            # MuJoCo orders quaternions w, x, y, z.
            out += [(f"{prefix}obj{slot}_q{a}", "1") for a in "wxyz"]
        return out

    return frame("") + frame("prev_") + [(f"goal_{a}", "m") for a in "xyz"]


@lru_cache(maxsize=1)
def embodiment() -> Embodiment:
    """The ``sawyer-metaworld`` embodiment, with limits read from a v3 environment's spaces."""
    _quiet()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS["reach-v3"]()
    obs_low = np.asarray(env.observation_space.low, dtype=np.float64)
    obs_high = np.asarray(env.observation_space.high, dtype=np.float64)
    act_low = np.asarray(env.action_space.low, dtype=np.float64)
    act_high = np.asarray(env.action_space.high, dtype=np.float64)
    hz = 1.0 / (env.frame_skip * env.model.opt.timestep)
    env.close()

    names = _state_names()
    box_low, box_high = np.array(WORKSPACE_LOW), np.array(WORKSPACE_HIGH)
    state = []
    for i, (name, unit) in enumerate(names):
        lo, hi = obs_low[i], obs_high[i]
        is_goal = name.startswith("goal_")
        if np.isfinite(lo) and np.isfinite(hi) and lo < hi and not is_goal:
            state.append(Channel(name, unit, float(lo), float(hi)))
        elif unit == "m":  # object or goal position: the workspace box
            axis = "xyz".index(name[-1])
            state.append(Channel(name, unit, float(box_low[axis]), float(box_high[axis])))
        else:  # quaternion component
            state.append(Channel(name, unit, -1.0, 1.0))
    action_names = [("hand_dx", "0.01 m"), ("hand_dy", "0.01 m"), ("hand_dz", "0.01 m"),
                    ("grip_effort", "1")]
    action = tuple(Channel(n, u, float(act_low[i]), float(act_high[i]))
                   for i, (n, u) in enumerate(action_names))
    return Embodiment(
        name=EMBODIMENT,
        control_hz=float(hz),
        state=tuple(state),
        action=action,
        description="Rethink Sawyer arm with a two-finger gripper in Meta-World v3 (MuJoCo)",
        # Objects and the goal are the world the arm acts in: LeRobot exports them as
        # observation.environment_state, the hand and gripper as observation.state.
        extra={"groups": (groups := _state_groups(names)),
               "environment_groups": [g for g in groups if not g.endswith("hand")]},
    )


def _state_groups(names: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Meaningful groups of the 39 channels (a model's stem makes one token of each)."""
    groups: dict[str, list[str]] = {}
    for name, _unit in names:
        prev = name.startswith("prev_")
        base = name[len("prev_"):] if prev else name
        part = "goal" if base.startswith("goal_") else "obj1" if base.startswith("obj1_") else \
            "obj2" if base.startswith("obj2_") else "hand"
        groups.setdefault(("prev_" if prev else "") + part, []).append(name)
    return groups


class MetaWorldExpert:
    """Meta-World's scripted expert for a task, behind the :class:`Policy` protocol.

    ``reset`` takes the task's plain text (``"pick place"``) and picks the matching scripted
    policy from ``metaworld.policies``; an unknown text is refused with ``ValidationError``.
    """

    def __init__(self) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self._map = ENV_POLICY_MAP
        self._by_text = {task_text(name): name for name in ENV_POLICY_MAP}
        self._policy: Any = None

    def reset(self, task: str) -> None:
        name = self._by_text.get(task)
        if name is None:
            raise ValidationError(f"no Meta-World expert for task {task!r}; use a v3 task's text "
                                  "such as 'pick place'")
        self._policy = self._map[name]()

    def act(self, state: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            _quiet()  # here too: test runners and callers may reset the warning filters
            action = self._policy.get_action(np.asarray(state, dtype=np.float64))
        return np.asarray(action, dtype=np.float64)


class MetaWorldEnv:
    """Adapter from Meta-World v3 to :class:`~onshore.sim.rollout.SimEnv`.

    One instance keeps one MuJoCo environment per task and the MT1 goal sets it has built,
    so a worker process pays their set-up cost once. Reusing an environment across episodes
    does not change results: ``reset`` restores the full simulator state.
    """

    name = "metaworld"
    extra_columns: dict[str, pa.DataType] = {}

    def __init__(self) -> None:
        _quiet()
        emb = embodiment()
        self.dt = 1.0 / emb.control_hz
        self.default_seconds = 500 * self.dt  # Meta-World v3's max_path_length
        self._envs: dict[str, Any] = {}
        self._goal_sets: dict[tuple[str, int, int], list[Any]] = {}
        self._env: Any = None

    def embodiment(self) -> Embodiment:
        return embodiment()

    def task_text(self, task: str) -> str:
        return task_text(task)

    def expert(self, period_s: float | None = None) -> Policy:
        return MetaWorldExpert()

    def _goals(self, task: str, seed: int, block: int) -> list[Any]:
        key = (task, seed, block)
        if key not in self._goal_sets:
            import metaworld

            digest = hashlib.sha256(f"onshore-mt1/{seed}/{task}/{block}".encode()).digest()
            mt1_seed = int.from_bytes(digest[:4], "big") >> 1  # np.random.seed takes < 2**32
            # Keep one goal set per task: runs walk through blocks in order.
            self._goal_sets = {k: v for k, v in self._goal_sets.items() if k[0] != task}
            self._goal_sets[key] = list(metaworld.MT1(task, seed=mt1_seed).train_tasks)
        return self._goal_sets[key]

    def reset(self, spec: EpisodeSpec, seconds: float) -> tuple[np.ndarray, dict[str, int]]:
        check_tasks([spec.task])
        env = self._envs.get(spec.task)
        if env is None:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            env = self._envs[spec.task] = ALL_V3_ENVIRONMENTS[spec.task]()
        limit = int(env.max_path_length)
        if seconds > limit * self.dt + 1e-9:
            raise ValidationError(f"Meta-World episodes last at most {limit} steps "
                                  f"({limit * self.dt:g} s); ask for fewer seconds")
        goals = self._goals(spec.task, spec.seed, spec.index // GOALS_PER_SET)
        env.set_task(goals[spec.index % GOALS_PER_SET])
        obs, _ = env.reset()
        self._env = env
        return np.asarray(obs, dtype=np.float64), {}

    def step(self, action: np.ndarray) -> Step:
        obs, reward, _terminated, _truncated, info = self._env.step(action.astype(np.float32))
        # Meta-World never terminates by itself; truncation at max_path_length is the
        # rollout's time limit.
        return Step(state=np.asarray(obs, dtype=np.float64), reward=float(reward),
                    success=bool(info.get("success", False)), terminated=False)
