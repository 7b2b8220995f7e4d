"""The safety envelope: what stands between a model's output and a machine's actuators.

Applied after the model, from the embodiment spec, in the server (per session) and again in the
OPC UA bridge next to the machine. This module imports numpy only, never torch: it must keep
working, and be reviewable, without the model stack (a test checks that importing it does not
import torch).

Semantics, loosely after the PLCopen safety function blocks (limit, rate limit, emergency stop
with explicit restart), in discrete time at the embodiment's control period ``T``:

- **clamp**: each action channel is held within ``[low, high]``;
- **rate limit**: each command differs from the previous command by at most ``max_rate * T``
  per channel (channels without ``max_rate`` are not rate limited). Commands are one per
  control period; a caller that sends faster does not get a faster machine, because the
  bound is per command;
- **hold on NaN/Inf**: a model output with NaN or Inf (or of the wrong width) is discarded;
  the last safe command is held and an alarm is raised;
- **watchdog**: when no state has arrived for ``watchdog_periods`` control periods, the
  envelope commands the safe action (``idle``);
- **e-stop**: ``estop()`` latches; every command then moves towards the safe action until
  ``reset_estop()`` is called explicitly. A new model output never clears it.

Moves towards the safe action (watchdog, e-stop) are rate limited too: a controlled stop
(PLCopen stop category 1), so that *every* command the envelope emits, whatever happened
before, is inside the limits and within ``max_rate * T`` of the previous one. Cutting power is
the machine's hard-wired emergency stop's job, outside software. The first command after
construction is only clamped unless the caller seeds ``initial`` (the bridge seeds it with the
actuators' current positions). The safe action defaults to 0 clamped into each channel's
limits; an integrator names a better one (``safe_action`` in the bridge map).

Every intervention is counted by kind (``counts``), returned with the command, and recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onshore.errors import ValidationError
from onshore.telemetry.embodiment import Embodiment

CLAMP = "clamp"
RATE = "rate"
NONFINITE = "nonfinite"
WATCHDOG = "watchdog"
ESTOP = "estop"
#: Every intervention kind, in the order of their bits in :func:`bits`.
KINDS = (CLAMP, RATE, NONFINITE, WATCHDOG, ESTOP)


def bits(kinds: Sequence[str]) -> int:
    """Interventions as an integer bit set (bit i: ``KINDS[i]``), as recorded per frame."""
    return sum(1 << KINDS.index(k) for k in set(kinds))


@dataclass(frozen=True)
class Limits:
    """What the envelope enforces: per-channel bounds, largest step per command, safe action."""

    low: np.ndarray
    high: np.ndarray
    max_step: np.ndarray  # inf where a channel has no max_rate
    safe: np.ndarray
    period: float  # seconds per control step
    watchdog_periods: int = 3

    @classmethod
    def from_embodiment(cls, emb: Embodiment, safe: Sequence[float] | None = None,
                        watchdog_periods: int = 3) -> Limits:
        """Limits of ``emb``'s action channels. Refused: a safe action of the wrong width, not
        finite, or outside the limits; ``watchdog_periods`` below 1."""
        low = np.array([c.low for c in emb.action], dtype=np.float64)
        high = np.array([c.high for c in emb.action], dtype=np.float64)
        period = 1.0 / emb.control_hz
        step = np.array([c.max_rate * period if c.max_rate is not None else math.inf for c in emb.action])
        if safe is None:
            safe_a = np.clip(np.zeros_like(low), low, high)
        else:
            safe_a = np.asarray(safe, dtype=np.float64).reshape(-1)
            if safe_a.shape != low.shape or not np.isfinite(safe_a).all():
                raise ValidationError(f"safe action must be {low.size} finite numbers (one per action channel of "
                                      f"{emb.name}), got {list(safe)}")
            if ((safe_a < low) | (safe_a > high)).any():
                raise ValidationError(f"safe action {list(safe)} is outside the action limits of {emb.name}")
        if isinstance(watchdog_periods, bool) or not isinstance(watchdog_periods, int) or watchdog_periods < 1:
            raise ValidationError(f"watchdog periods must be a whole number >= 1, got {watchdog_periods}")
        return cls(low, high, step, safe_a, period, watchdog_periods)


@dataclass(frozen=True)
class Command:
    """One command for the actuators and what the envelope did to make it."""

    action: np.ndarray  # float64, inside the limits
    interventions: tuple[str, ...]
    alarm: str | None = None


@dataclass
class Envelope:
    """The envelope of one machine (or one session). Not thread-safe: one caller at a time."""

    limits: Limits
    initial: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    estopped: bool = False
    estop_reason: str = ""
    _last: np.ndarray | None = None
    _last_seen: float | None = None

    def __post_init__(self) -> None:
        if self.initial is not None:
            a = np.asarray(self.initial, dtype=np.float64).reshape(-1)
            if a.shape == self.limits.low.shape and np.isfinite(a).all():
                self._last = np.clip(a, self.limits.low, self.limits.high)

    @property
    def last(self) -> np.ndarray | None:
        """The last command emitted (None before the first)."""
        return None if self._last is None else self._last.copy()

    def _emit(self, target: np.ndarray, kinds: list[str], alarm: str | None) -> Command:
        lim = self.limits
        out = np.clip(target, lim.low, lim.high)
        if not np.array_equal(out, target) and CLAMP not in kinds:
            kinds.append(CLAMP)
        if self._last is not None:
            # move at most max_step from the last command; the last command is inside the limits,
            # so clamping after the step cannot take the result further than max_step from it
            lo = np.maximum(self._last - lim.max_step, lim.low)
            hi = np.minimum(self._last + lim.max_step, lim.high)
            stepped = np.clip(out, lo, hi)
            if not np.array_equal(stepped, out):
                kinds.append(RATE)
            out = stepped
        self._last = out
        for k in kinds:
            self.counts[k] += 1
        return Command(out.copy(), tuple(kinds), alarm)

    def command(self, raw: object, now: float | None = None) -> Command:
        """The command for a model output ``raw`` made from a state that arrived at ``now``.

        Never raises on ``raw``: anything that is not ``action_dim`` finite numbers is a
        NONFINITE intervention (hold the last command, or the safe action before any).
        """
        if now is not None:
            self._last_seen = now
        kinds: list[str] = []
        alarm = None
        if self.estopped:
            return self._emit(self.limits.safe.copy(), [ESTOP], f"e-stop latched: {self.estop_reason}")
        try:
            a = np.asarray(raw, dtype=np.float64).reshape(-1)
            ok = a.shape == self.limits.low.shape and bool(np.isfinite(a).all())
        except (TypeError, ValueError):
            ok = False
        if not ok:
            kinds.append(NONFINITE)
            alarm = "model output was not finite (NaN/Inf) or had the wrong width; holding the last safe command"
            a = self._last.copy() if self._last is not None else self.limits.safe.copy()
        return self._emit(a, kinds, alarm)

    def idle(self, now: float) -> Command | None:
        """Called each control period when no fresh command was made: the watchdog's safe command
        once no state has arrived for ``watchdog_periods`` periods (measured from the first state,
        or from the first call), else None."""
        if self._last_seen is None:
            self._last_seen = now
            return None
        if now - self._last_seen < self.limits.watchdog_periods * self.limits.period - 1e-9:
            return None
        kinds = [WATCHDOG] + ([ESTOP] if self.estopped else [])
        return self._emit(self.limits.safe.copy(), kinds, "watchdog: no state for "
                          f"{self.limits.watchdog_periods} control periods; commanding the safe action")

    def estop(self, reason: str = "e-stop") -> None:
        """Latch the e-stop: from now on every command moves towards the safe action."""
        self.estopped = True
        self.estop_reason = reason

    def reset_estop(self) -> None:
        """Clear a latched e-stop (an explicit act of a person or the machine's safety logic)."""
        self.estopped = False
        self.estop_reason = ""
