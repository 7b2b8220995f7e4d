"""One episode: a policy acting on a simulated machine, recorded frame by frame.

Every environment adapter (Meta-World, Tennessee Eastman) satisfies :class:`SimEnv`; the
rollout loop here is the only place that decides when the policy acts, what a frame holds and
when an episode ends, so generated telemetry and closed-loop evaluation agree on all three.

Frame ``k`` holds the state sensed at a control tick, the action the policy chose for it,
and in the ``next.*`` fields what happened while that action was held until the next tick:
the summed reward, whether the task was in a success state at the end, and whether the
episode ended. ``timestamp`` is the simulated time of the sensed state, in seconds from the
start of the episode.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from onshore.errors import ValidationError
from onshore.sim.policy import Policy
from onshore.sim.sensors import Sensor, SensorOptions, control_period
from onshore.telemetry.embodiment import Embodiment


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to run: everything its randomness derives from.

    ``index`` counts episodes within one task; ``episode_index`` counts them across the run.
    """

    env: str
    task: str
    index: int
    episode_index: int
    seed: int

    @property
    def episode_seed(self) -> int:
        """A 63-bit seed that depends on (env, run seed, task, index) only.

        Hashing rather than counting means an episode's randomness does not depend on which
        worker runs it, in what order, or which other tasks share the run.
        """
        key = f"onshore-sim/{self.env}/{self.seed}/{self.task}/{self.index}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


@dataclass
class Step:
    """What one simulator step returns to the rollout loop."""

    state: np.ndarray
    reward: float
    success: bool
    terminated: bool  # the machine ended the episode itself (e.g. a plant shutdown)
    extra: dict[str, int] = field(default_factory=dict)


class SimEnv(Protocol):
    """An environment adapter. ``dt`` is seconds per simulator step."""

    name: str
    dt: float
    default_seconds: float
    extra_columns: dict[str, pa.DataType]

    def embodiment(self) -> Embodiment: ...

    def task_text(self, task: str) -> str: ...

    def reset(self, spec: EpisodeSpec, seconds: float) -> tuple[np.ndarray, dict[str, int]]: ...

    def step(self, action: np.ndarray) -> Step: ...

    def expert(self, period_s: float) -> Policy:
        """The scripted expert, acting every ``period_s`` seconds."""
        ...


@dataclass
class EpisodeFrames:
    """A recorded episode, column by column (the frame schema's types)."""

    spec: EpisodeSpec
    task_text: str
    timestamp: np.ndarray  # float64 [T]
    state: np.ndarray  # float32 [T, state_dim]
    action: np.ndarray  # float32 [T, action_dim]
    reward: np.ndarray  # float32 [T]
    done: np.ndarray  # bool [T]
    success: np.ndarray  # bool [T]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    terminated: bool = False  # ended by the machine (shutdown), not by time or success

    @property
    def length(self) -> int:
        return int(self.timestamp.shape[0])

    @property
    def total_return(self) -> float:
        return float(self.reward.astype(np.float64).sum())

    @property
    def succeeded(self) -> bool:
        return bool(self.success.any())


POLICY_SEES = ("sensed", "exact")


def check_policy_sees(value: str) -> str:
    """``value`` if it is one of :data:`POLICY_SEES`; else a ``ValidationError`` naming them."""
    if value not in POLICY_SEES:
        raise ValidationError(f"what the expert sees must be one of {', '.join(POLICY_SEES)}, got {value!r}")
    return value


def rollout(
    env: SimEnv,
    policy: Policy,
    spec: EpisodeSpec,
    *,
    sensors: SensorOptions | None = None,
    seconds: float | None = None,
    after_success: int | None = None,
    policy_sees: str = "sensed",
) -> EpisodeFrames:
    """Run one episode of ``spec`` with ``policy`` and return its frames.

    ``seconds`` caps simulated time (default: the environment's own episode length).
    ``after_success``: ``None`` ignores success; ``n`` ends the episode ``n`` frames after the
    first frame in a success state (0 ends on it). Actions are clipped to the embodiment's
    limits before they are applied and recorded, as the machine's actuators would saturate.

    ``policy_sees``: ``"sensed"`` (the default) gives the policy the sensed state, as a real
    controller gets; ``"exact"`` gives it the true state while the frames still record the sensed
    one. The second makes telemetry whose observations are a factory's sensors and whose actions
    come from an expert that was not fooled by them: the data to learn to act better than a
    controller that sees only noisy readings.

    Refused (``ValidationError``): a control rate faster than the simulator, an action of the
    wrong width or with NaN/Inf, a ``policy_sees`` other than those two.
    """
    check_policy_sees(policy_sees)
    sensors = sensors or SensorOptions()
    emb = env.embodiment()
    period = control_period(sensors, env.dt)
    seconds = env.default_seconds if seconds is None else float(seconds)
    max_steps = max(1, int(math.floor(seconds / env.dt + 1e-9)))
    rng = np.random.default_rng([spec.episode_seed, 0x5E45])  # sensor noise stream
    sensor = Sensor(sensors, emb.state, rng)
    a_low = np.array([c.low for c in emb.action])
    a_high = np.array([c.high for c in emb.action])

    raw, extra = env.reset(spec, seconds)
    text = env.task_text(spec.task)
    policy.reset(text)

    ts: list[float] = []
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    dones: list[bool] = []
    successes: list[bool] = []
    extras: dict[str, list[int]] = {k: [] for k in env.extra_columns}
    i = 0  # simulator steps taken
    tick = 0  # control steps taken
    frames_left: int | None = None  # counts down once success was first seen
    terminated = ended = False
    while not ended:
        sensed = sensor.sense(raw)
        seen = np.asarray(raw, dtype=np.float64).copy() if policy_sees == "exact" else sensed.copy()
        action = np.asarray(policy.act(seen), dtype=np.float64).reshape(-1)
        if action.shape != (emb.action_dim,) or not np.isfinite(action).all():
            raise ValidationError(
                f"policy returned an invalid action at frame {tick} of episode "
                f"{spec.episode_index} ({spec.task}): need {emb.action_dim} finite numbers, "
                f"got {action.tolist()}"
            )
        action = np.clip(action, a_low, a_high)
        ts.append(i * env.dt)
        states.append(sensed)
        actions.append(action)
        for k in extras:
            extras[k].append(int(extra.get(k, 0)))
        tick += 1
        reward, success = 0.0, False
        # Hold the action until the next control tick (zero-order hold).
        while True:
            step = env.step(action)
            i += 1
            raw, extra = step.state, step.extra
            reward += float(step.reward)
            success = bool(step.success)
            if step.terminated:
                terminated = ended = True
                break
            if i >= max_steps:
                ended = True
                break
            if i * env.dt >= tick * period - 1e-9 * env.dt:
                break
        if after_success is not None:
            if frames_left is None and success:
                frames_left = after_success
            elif frames_left is not None:
                frames_left -= 1
            if frames_left is not None and frames_left <= 0:
                ended = True
        rewards.append(reward)
        successes.append(success)
        dones.append(ended)

    return EpisodeFrames(
        spec=spec,
        task_text=text,
        timestamp=np.asarray(ts, dtype=np.float64),
        state=np.asarray(states, dtype=np.float32),
        action=np.asarray(actions, dtype=np.float32),
        reward=np.asarray(rewards, dtype=np.float32),
        done=np.asarray(dones, dtype=bool),
        success=np.asarray(successes, dtype=bool),
        extra={k: np.asarray(v, dtype=np.int64) for k, v in extras.items()},
        terminated=terminated,
    )
