"""The safety envelope: what stands between a model's output and a machine's actuators.

Applied after the model, from the embodiment spec, in the server (per machine: per client and
embodiment, kept across sessions) and again in the OPC UA bridge next to the machine. This
module imports numpy only, never torch: it must keep working, and be reviewable, without the
model stack (a test checks that importing it does not import torch).

Semantics, loosely after the PLCopen safety function blocks (limit, rate limit, emergency stop
with explicit restart), with the embodiment's control period ``T``:

- **clamp**: each action channel is held within ``[low, high]``;
- **rate limit**: ``max_rate`` is per second of (monotonic) time, not per command: a command
  differs from the previous one by at most ``max_rate * min(dt, T)``, where ``dt`` is the time
  since the previous command. A caller that sends commands faster than the control rate gets
  proportionally smaller steps (never a faster machine), and a caller that paused gets no
  bigger jump than one period's (channels without ``max_rate`` are not rate limited);
- **hold on NaN/Inf**: a model output with NaN or Inf (or of the wrong width) is discarded;
  the last safe command is held and an alarm is raised;
- **watchdog**: when no state has arrived for ``watchdog_periods`` control periods, the
  envelope commands the safe action (``idle``);
- **e-stop**: ``estop()`` latches; every command then moves towards the safe action until
  ``reset_estop(by)`` is called explicitly, naming who cleared it (kept in ``estop_log``).
  Nothing else clears it: not a new model output, not a new episode (``restart``), not a
  reconnect (the server keeps one envelope per machine across sessions).
- **restart**: a new episode on the same machine keeps the last command applied and when: the
  first command of the episode is rate limited from it, never free.

Moves towards the safe action (watchdog, e-stop, ``hold``) are rate limited too: a controlled
stop (PLCopen stop category 1), so that *every* command the envelope emits, whatever happened
before, is inside the limits and within ``max_rate`` per second of the previous one. Cutting
power is the machine's hard-wired emergency stop's job, outside software. The first command a
machine ever gets is only clamped unless the caller seeds ``initial`` (the bridge seeds it with
the actuators' current positions). The safe action defaults to 0 clamped into each channel's
limits; an integrator names a better one (``safe_action`` in the bridge map).

Every intervention is counted by kind (``counts``), returned with the command, and recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from onshore.errors import ValidationError
from onshore.telemetry.embodiment import Channel, Embodiment

CLAMP = "clamp"
RATE = "rate"
NONFINITE = "nonfinite"
WATCHDOG = "watchdog"
ESTOP = "estop"
#: Something outside the model failed (the plant reported NaN, a Bad status code or a stale
#: timestamp; the policy server refused or went away): the bridge commands the safe action.
FAULT = "fault"
#: Every intervention kind, in the order of their bits in :func:`bits`.
KINDS = (CLAMP, RATE, NONFINITE, WATCHDOG, ESTOP, FAULT)


def bits(kinds: Sequence[str]) -> int:
    """Interventions as an integer bit set (bit i: ``KINDS[i]``), as recorded per frame."""
    return sum(1 << KINDS.index(k) for k in set(kinds))


@dataclass(frozen=True)
class Limits:
    """What the envelope enforces: per-channel bounds, largest change per second, safe action."""

    low: np.ndarray
    high: np.ndarray
    max_rate: np.ndarray  # units per second; inf where a channel has no max_rate
    safe: np.ndarray
    period: float  # seconds per control step
    watchdog_periods: int = 3

    @property
    def max_step(self) -> np.ndarray:
        """The largest change in one control period (inf where not rate limited)."""
        return self.max_rate * self.period

    def step_within(self, dt: float) -> np.ndarray:
        """The largest change allowed ``dt`` seconds after the previous command: per second of
        time, and never more than one period's worth (a caller that paused gets no jump)."""
        dt = min(max(dt, 0.0), self.period)
        limited = np.isfinite(self.max_rate)
        return np.where(limited, np.where(limited, self.max_rate, 0.0) * dt, math.inf)

    @classmethod
    def from_embodiment(cls, emb: Embodiment, safe: Sequence[float] | None = None,
                        watchdog_periods: int = 3, period: float | None = None) -> Limits:
        """Limits of ``emb``'s action channels. ``period`` overrides the control period (a bridge
        running a simulated plant faster than real time); ``max_rate`` stays per second.

        Refused: a safe action of the wrong width, not finite, or outside the limits;
        ``watchdog_periods`` below 1; a period that is not a positive number."""
        low = np.array([c.low for c in emb.action], dtype=np.float64)
        high = np.array([c.high for c in emb.action], dtype=np.float64)
        period = 1.0 / emb.control_hz if period is None else float(period)
        if not (math.isfinite(period) and period > 0):
            raise ValidationError(f"control period must be a positive number of seconds, got {period}")
        rate = np.array([c.max_rate if c.max_rate is not None else math.inf for c in emb.action], dtype=np.float64)
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
        return cls(low, high, rate, safe_a, period, watchdog_periods)


def narrowed(registered: Embodiment, local: Embodiment, where: str) -> Embodiment:
    """``registered`` with ``local``'s action limits where they are tighter, never wider.

    For a bridge map's own embodiment file: it may narrow the limits the registered embodiment
    sets (a lower ``high``, a higher ``low``, a smaller ``max_rate``), never widen them.
    Refused (``ValidationError`` naming ``where`` and the channel): other action channels, or a
    limit wider than the registered one.
    """
    names = [c.name for c in registered.action]
    if [c.name for c in local.action] != names:
        raise ValidationError(f"{where}: action channels {[c.name for c in local.action]} differ from the registered "
                              f"embodiment {registered.name}'s {names}")
    out: list[Channel] = []
    for reg, loc in zip(registered.action, local.action, strict=True):
        wider = []
        if loc.low < reg.low:
            wider.append(f"low {loc.low} < {reg.low}")
        if loc.high > reg.high:
            wider.append(f"high {loc.high} > {reg.high}")
        if reg.max_rate is not None and (loc.max_rate is None or loc.max_rate > reg.max_rate):
            wider.append(f"max_rate {loc.max_rate} > {reg.max_rate}")
        if wider:
            raise ValidationError(f"{where}: action channel {reg.name!r} would widen the registered limits "
                                  f"({'; '.join(wider)}); a map may only narrow them")
        out.append(Channel(reg.name, reg.unit, loc.low, loc.high, loc.max_rate))
    return replace(registered, action=tuple(out))


@dataclass(frozen=True)
class Command:
    """One command for the actuators and what the envelope did to make it."""

    action: np.ndarray  # float64, inside the limits
    interventions: tuple[str, ...]
    alarm: str | None = None


@dataclass(frozen=True)
class EstopEvent:
    """A latch or a reset of the e-stop: what, who, why, when (monotonic seconds)."""

    event: str  # "estop" or "reset_estop"
    by: str
    reason: str
    at: float


@dataclass
class Envelope:
    """The envelope of one machine. Not thread-safe: one caller at a time. ``clock`` gives the
    time of a command made without ``now`` (monotonic seconds)."""

    limits: Limits
    initial: np.ndarray | None = None
    clock: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    estopped: bool = False
    estop_reason: str = ""
    estop_log: list[EstopEvent] = field(default_factory=list)
    _last: np.ndarray | None = None
    _last_time: float | None = None
    _last_seen: float | None = None

    def __post_init__(self) -> None:
        self._seed(self.initial)

    def _seed(self, initial: object) -> None:
        if initial is None:
            return
        try:
            a = np.asarray(initial, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):  # an unusable seed is no seed: the first command is only clamped
            return
        if a.shape == self.limits.low.shape and np.isfinite(a).all():
            self._last = np.clip(a, self.limits.low, self.limits.high)

    @property
    def last(self) -> np.ndarray | None:
        """The last command emitted (None before the first)."""
        return None if self._last is None else self._last.copy()

    def restart(self, initial: object = None) -> None:
        """A new episode on the same machine. The e-stop latch and the last command applied (and
        when) are kept, so the first command of the episode is rate limited from it; ``initial``
        (the actuators' positions as a client reports them) seeds only a machine that has never
        been commanded. The watchdog's clock and the counts start afresh."""
        if self._last is None:
            self._seed(initial)
        self._last_seen = None
        self.counts = dict.fromkeys(KINDS, 0)

    def _emit(self, target: np.ndarray, kinds: list[str], alarm: str | None, now: float | None) -> Command:
        lim = self.limits
        now = self.clock() if now is None else now
        out = np.clip(target, lim.low, lim.high)
        if not np.array_equal(out, target) and CLAMP not in kinds:
            kinds.append(CLAMP)
        timed = _finite(now)
        if self._last is not None:
            # the first command after a seed has no time of its own: one period's step; a time that
            # is not a finite number measures nothing, so it allows no move at all
            dt = 0.0 if not timed else lim.period if self._last_time is None else now - self._last_time
            step = lim.step_within(dt)
            # the last command is inside the limits, so clamping after the step cannot take the
            # result further than ``step`` from it
            lo = np.maximum(self._last - step, lim.low)
            hi = np.minimum(self._last + step, lim.high)
            stepped = np.clip(out, lo, hi)
            if not np.array_equal(stepped, out):
                kinds.append(RATE)
            out = stepped
        self._last = out
        if timed:
            self._last_time = now if self._last_time is None else max(now, self._last_time)
        for k in kinds:
            self.counts[k] += 1
        return Command(out.copy(), tuple(kinds), alarm)

    def command(self, raw: object, now: float | None = None) -> Command:
        """The command for a model output ``raw`` made from a state that arrived at ``now``
        (default: ``clock()``). A ``now`` that is NaN or infinite measures no time: the command
        may not move at all. An earlier ``now`` than the last (a clock that jumped back) does not
        move either until time passes the last command's again.

        Never raises on ``raw``: anything that is not ``action_dim`` finite numbers is a
        NONFINITE intervention (hold the last command, or the safe action before any).
        """
        now = self.clock() if now is None else now
        if _finite(now):
            self._last_seen = now
        kinds: list[str] = []
        alarm = None
        if self.estopped:
            return self._emit(self.limits.safe.copy(), [ESTOP], f"e-stop latched: {self.estop_reason}", now)
        a = _action_or_none(raw, self.limits.low.shape)
        if a is None:
            kinds.append(NONFINITE)
            alarm = "model output was not finite (NaN/Inf) or had the wrong width; holding the last safe command"
            a = self._last.copy() if self._last is not None else self.limits.safe.copy()
        return self._emit(a, kinds, alarm, now)

    def hold(self, kind: str, alarm: str, now: float | None = None, target: object = None) -> Command:
        """Command ``target`` (the configured safe values), or hold the last command (the safe
        action before any) when ``target`` is None, rate limited, as intervention ``kind``.
        For a fault outside the model (the plant's readings, the policy server gone). A ``target``
        that is not ``action_dim`` finite numbers is not used: the last command is held."""
        if self.estopped:
            return self._emit(self.limits.safe.copy(), [kind, ESTOP], alarm, now)
        t = _action_or_none(target, self.limits.low.shape)
        if t is None:  # no target, or one that is not action_dim finite numbers: hold
            t = self._last.copy() if self._last is not None else self.limits.safe.copy()
        return self._emit(t, [kind], alarm, now)

    def idle(self, now: float) -> Command | None:
        """Called each control period when no fresh command was made: the watchdog's safe command
        once no state has arrived for ``watchdog_periods`` periods (measured from the first state,
        or from the first call), else None."""
        if not _finite(now):  # a time that is not a number measures no silence
            return None
        if self._last_seen is None:
            self._last_seen = now
            return None
        if now - self._last_seen < self.limits.watchdog_periods * self.limits.period - 1e-9:
            return None
        kinds = [WATCHDOG] + ([ESTOP] if self.estopped else [])
        return self._emit(self.limits.safe.copy(), kinds, "watchdog: no state for "
                          f"{self.limits.watchdog_periods} control periods; commanding the safe action", now)

    def estop(self, reason: str = "e-stop", by: str = "") -> None:
        """Latch the e-stop: from now on every command moves towards the safe action. A second
        e-stop while latched keeps the first reason."""
        if not self.estopped:
            self.estop_reason = reason
            self.estop_log.append(EstopEvent("estop", by, reason, self.clock()))
        self.estopped = True

    def reset_estop(self, by: str) -> bool:
        """Clear a latched e-stop: an explicit act of a person or the machine's safety logic,
        named by ``by`` (kept in ``estop_log``). Returns whether one was latched."""
        if not by:
            raise ValidationError("reset_estop needs who clears the e-stop")
        was = self.estopped
        if was:
            self.estop_log.append(EstopEvent("reset_estop", by, self.estop_reason, self.clock()))
        self.estopped = False
        self.estop_reason = ""
        return was


def _finite(t: object) -> bool:
    """Whether ``t`` is a usable time: a real number, not NaN or infinite."""
    return isinstance(t, int | float | np.floating | np.integer) and not isinstance(t, bool) and math.isfinite(t)


def _action_or_none(value: object, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as float64 of ``shape`` when it is that many finite numbers, else None."""
    if value is None:
        return None
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return a if a.shape == shape and bool(np.isfinite(a).all()) else None
