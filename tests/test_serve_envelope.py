"""The safety envelope: no torch, and no sequence of model outputs or events escapes its limits."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onshore.errors import ValidationError
from onshore.serve import envelope as E
from onshore.telemetry.embodiment import Channel, Embodiment

FURNACE = Embodiment("furnace-line-3", 10.0, (Channel("t", "degC", 0.0, 1400.0),),
                     (Channel("fuel", "%", 0.0, 100.0, 5.0), Channel("air", "%", -20.0, 80.0, 10.0),
                      Channel("free", "", -1.0, 1.0, None)))


def test_importing_the_envelope_does_not_import_torch() -> None:
    code = ("import sys; import onshore.serve.envelope, onshore.serve.wire, onshore.serve.client, "
            "onshore.serve.bridge; from onshore.serve import Client; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_each_intervention_is_named_counted_and_returned() -> None:
    lim = E.Limits.from_embodiment(FURNACE, watchdog_periods=2)
    assert lim.max_step.tolist()[:2] == [0.5, 1.0] and math.isinf(lim.max_step[2])
    assert lim.max_rate.tolist()[:2] == [5.0, 10.0]
    env = E.Envelope(lim, initial=[50.0, 10.0, 0.0])
    c = env.command([51.0, 10.5, 0.3], now=0.0)  # fuel moves 1.0 > 0.5 per period
    assert c.action.tolist() == [50.5, 10.5, 0.3] and c.interventions == (E.RATE,) and c.alarm is None
    c = env.command([200.0, 10.5, -7.0], now=0.1)  # clamp (free to -1, fuel to 100) then rate on fuel
    assert c.action.tolist() == [51.0, 10.5, -1.0] and set(c.interventions) == {E.CLAMP, E.RATE}
    c = env.command([np.nan, 0.0, 0.0], now=0.2)  # hold the last command, alarm
    assert c.action.tolist() == [51.0, 10.5, -1.0] and c.interventions == (E.NONFINITE,) and "NaN" in c.alarm
    c = env.command([1.0, 2.0], now=0.3)  # wrong width: same as not finite
    assert c.interventions == (E.NONFINITE,)
    assert env.counts == {E.CLAMP: 1, E.RATE: 2, E.NONFINITE: 2, E.WATCHDOG: 0, E.ESTOP: 0, E.FAULT: 0}
    assert E.bits([E.CLAMP, E.RATE]) == 3 and E.bits([E.ESTOP]) == 16


def test_watchdog_commands_the_safe_action_after_n_silent_periods() -> None:
    lim = E.Limits.from_embodiment(FURNACE, safe=[0.0, 0.0, 0.0], watchdog_periods=3)
    env = E.Envelope(lim, initial=[2.0, 0.0, 0.0])
    env.command([2.0, 0.0, 0.0], now=10.0)
    assert env.idle(10.1) is None and env.idle(10.2) is None
    c = env.idle(10.3)  # three periods without a state
    assert c is not None and c.action[0] == pytest.approx(1.5)  # a controlled stop: ramps down at max_rate
    assert c.interventions == (E.WATCHDOG, E.RATE)
    for t in range(4):
        c = env.idle(10.4 + t / 10)
    assert c is not None and c.action.tolist() == [0.0, 0.0, 0.0]
    assert env.counts[E.WATCHDOG] == 5
    assert env.command([0.2, 0.0, 0.0], now=11.0).interventions == ()  # a fresh state ends it


def test_e_stop_latches_until_an_explicit_reset() -> None:
    env = E.Envelope(E.Limits.from_embodiment(FURNACE, safe=[0.0, 0.0, 0.0]), initial=[1.0, 0.0, 0.0])
    env.estop("button", by="line-3")
    for k in range(3):  # model outputs do not clear it, nor does a new episode
        c = env.command([1.0, 0.0, 0.0], now=k / 10)
        assert c.interventions[0] == E.ESTOP and "button" in (c.alarm or "")
        env.restart(initial=[1.0, 0.0, 0.0])
        assert env.estopped
    assert c.action.tolist() == [0.0, 0.0, 0.0]  # 1.0 -> 0.5 -> 0.0 at 0.5 per period
    with pytest.raises(ValidationError, match="who"):
        env.reset_estop("")
    assert env.estopped
    assert env.reset_estop(by="operator ito") is True
    assert env.command([0.3, 0.0, 0.0], now=0.3).interventions == ()
    assert [(e.event, e.by, e.reason) for e in env.estop_log] == [("estop", "line-3", "button"),
                                                                  ("reset_estop", "operator ito", "button")]


def test_max_rate_is_per_second_of_time_not_per_command() -> None:
    lim = E.Limits.from_embodiment(FURNACE)  # fuel: 5 %/s at 10 Hz
    env = E.Envelope(lim, initial=[0.0, 0.0, 0.0])
    env.command([0.0, 0.0, 0.0], now=0.0)
    t = 0.0
    for _ in range(100):  # ten commands per control period, for one second
        t += lim.period / 10
        c = env.command([100.0, 80.0, 0.0], now=t)
    assert c.action[0] == pytest.approx(5.0) and c.action[1] == pytest.approx(10.0)  # one second's worth
    # a caller that paused gets one period's step, not the whole pause's
    c = env.command([100.0, 80.0, 0.0], now=t + 60.0)
    assert c.action[0] == pytest.approx(5.5) and E.RATE in c.interventions


def test_a_new_episode_starts_from_the_last_command_applied() -> None:
    lim = E.Limits.from_embodiment(FURNACE)
    env = E.Envelope(lim, initial=[0.0, 0.0, 0.0])
    env.command([0.5, 0.0, 0.0], now=0.1)
    env.restart(initial=[90.0, 0.0, 0.0])  # what a client claims the actuators are at does not count
    c = env.command([90.0, 0.0, 0.0], now=0.2)
    assert c.action[0] == pytest.approx(1.0) and E.RATE in c.interventions
    fresh = E.Envelope(lim)
    fresh.restart(initial=[90.0, 0.0, 0.0])  # a machine never commanded is seeded by it
    assert fresh.command([99.0, 0.0, 0.0], now=0.0).action[0] == pytest.approx(90.5)


def test_a_map_narrows_the_registered_limits_and_never_widens_them() -> None:
    narrow = Embodiment("furnace-line-3", 10.0, FURNACE.state,
                        (Channel("fuel", "%", 10.0, 50.0, 1.0), Channel("air", "%", -20.0, 80.0, 10.0),
                         Channel("free", "", -1.0, 1.0, 0.5)))
    got = E.narrowed(FURNACE, narrow, "map.toml")
    assert [(c.low, c.high, c.max_rate) for c in got.action] == [(10.0, 50.0, 1.0), (-20.0, 80.0, 10.0),
                                                                 (-1.0, 1.0, 0.5)]
    for wide in ((Channel("fuel", "%", -5.0, 100.0, 5.0),), (Channel("fuel", "%", 0.0, 101.0, 5.0),),
                 (Channel("fuel", "%", 0.0, 100.0, 6.0),), (Channel("fuel", "%", 0.0, 100.0, None),)):
        emb = Embodiment("furnace-line-3", 10.0, FURNACE.state, wide + FURNACE.action[1:])
        with pytest.raises(ValidationError, match="'fuel' would widen"):
            E.narrowed(FURNACE, emb, "map.toml")
    with pytest.raises(ValidationError, match="differ"):
        E.narrowed(FURNACE, Embodiment("x", 10.0, FURNACE.state, FURNACE.action[:2]), "map.toml")


def test_bad_safe_actions_and_watchdog_settings_are_refused() -> None:
    for safe in ([0.0], [np.nan, 0.0, 0.0], [150.0, 0.0, 0.0]):
        with pytest.raises(ValidationError):
            E.Limits.from_embodiment(FURNACE, safe=safe)
    with pytest.raises(ValidationError):
        E.Limits.from_embodiment(FURNACE, watchdog_periods=0)
    # the default safe action is 0 clamped into each channel's limits
    emb = Embodiment("x", 10.0, FURNACE.state, (Channel("a", "", 2.0, 5.0, 1.0),))
    assert E.Limits.from_embodiment(emb).safe.tolist() == [2.0]


values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0]))
outputs = st.one_of(st.lists(values, min_size=3, max_size=3), st.lists(values, min_size=0, max_size=5),
                    st.just("not numbers"))
gaps = st.one_of(st.just(0.0), st.floats(0, 0.3), st.floats(0, 5))  # same instant, faster, slower than 10 Hz
events = st.one_of(st.tuples(st.just("act"), outputs, gaps), st.tuples(st.just("idle"), st.none(), gaps),
                   st.tuples(st.just("hold"), st.sampled_from([None, (10.0, 0.0, 0.5), (500.0, 0.0, 0.0)]), gaps),
                   st.tuples(st.just("estop"), st.none(), st.just(0.0)),
                   st.tuples(st.just("reset_estop"), st.none(), st.just(0.0)),
                   st.tuples(st.just("restart"), st.one_of(st.none(), outputs), st.just(0.0)))


@settings(max_examples=300, deadline=None)
@given(st.lists(events, min_size=1, max_size=60), st.booleans(), st.integers(1, 4))
def test_no_sequence_of_messages_resets_and_timings_escapes_the_limits_or_max_rate_per_second(
        seq: list, seeded: bool, watchdog: int) -> None:
    lim = E.Limits.from_embodiment(FURNACE, safe=[10.0, 0.0, 0.5], watchdog_periods=watchdog)
    clock = [0.0]
    env = E.Envelope(lim, initial=[99.0, -20.0, 1.0] if seeded else None, clock=lambda: clock[0])
    previous, previous_t = env.last, None
    latched = False
    for kind, arg, gap in seq:
        clock[0] += gap
        now = clock[0]
        if kind == "act":
            cmd = env.command(arg, now)
        elif kind == "idle":
            cmd = env.idle(now)
        elif kind == "hold":
            cmd = env.hold(E.FAULT, "plant fault", now, arg)
        elif kind == "estop":
            env.estop("test", by="t")
            latched = True
            continue
        elif kind == "reset_estop":
            env.reset_estop("operator")
            latched = False
            continue
        else:
            env.restart(arg)
            assert env.estopped == latched  # a new episode never clears the latch
            continue
        assert env.estopped == latched
        if cmd is None:
            continue
        if latched:
            assert E.ESTOP in cmd.interventions
        a = cmd.action
        assert a.shape == (3,) and np.isfinite(a).all()
        assert (a >= lim.low).all() and (a <= lim.high).all()
        if previous is not None:
            # per second of time since the previous command; one period's worth before its first time
            dt = lim.period if previous_t is None else min(now - previous_t, lim.period)
            bound = np.where(np.isinf(lim.max_rate), np.inf, np.nan_to_num(lim.max_rate, posinf=0.0) * dt)
            assert (np.abs(a - previous) <= bound + 1e-9 * (1 + np.abs(previous))).all(), (a, previous, dt)
        previous, previous_t = a, now


odd_times = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0]))
hostile = st.one_of(st.tuples(st.just("act"), outputs, odd_times), st.tuples(st.just("idle"), st.none(), odd_times),
                    st.tuples(st.just("hold"), st.one_of(st.none(), outputs), odd_times),
                    st.tuples(st.just("estop"), st.none(), odd_times),
                    st.tuples(st.just("restart"), st.one_of(st.none(), outputs), odd_times))


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=60), st.booleans())
def test_hostile_timestamps_and_hold_targets_never_escape_the_limits_or_the_rate(seq: list, seeded: bool) -> None:
    """Times that are NaN, infinite, huge or jump back, and hold targets of any width or value:
    every command stays finite, inside the limits, and moves no more than the rate allows for the
    time that really passed (the largest finite time seen so far only ever grows)."""
    lim = E.Limits.from_embodiment(FURNACE, safe=[10.0, 0.0, 0.5])
    env = E.Envelope(lim, initial=[99.0, -20.0, 1.0] if seeded else None, clock=lambda: 0.0)
    previous, latest = env.last, None
    for kind, arg, now in seq:
        if kind == "act":
            cmd = env.command(arg, now)
        elif kind == "idle":
            cmd = env.idle(now)
        elif kind == "hold":
            cmd = env.hold(E.FAULT, "plant fault", now, arg)
        elif kind == "estop":
            env.estop("test", by="t")
            continue
        else:
            env.restart(arg)
            continue
        if cmd is None:
            continue
        a = cmd.action
        assert a.shape == (3,) and np.isfinite(a).all(), a
        assert (a >= lim.low).all() and (a <= lim.high).all()
        if previous is not None:
            # the time this command may use: how far the latest finite time moved forward
            finite = math.isfinite(now)
            dt = (lim.period if latest is None else min(max(now - latest, 0.0), lim.period)) if finite else 0.0
            bound = np.where(np.isinf(lim.max_rate), np.inf, np.nan_to_num(lim.max_rate, posinf=0.0) * dt)
            assert (np.abs(a - previous) <= bound + 1e-9 * (1 + np.abs(previous))).all(), (a, previous, now, latest)
        if math.isfinite(now):
            latest = now if latest is None else max(latest, now)
        previous = a
