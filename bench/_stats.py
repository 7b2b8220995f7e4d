"""Shared by the bench scripts: interleaved repetitions and min/median/max figures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(cases: dict[str, Callable[[], float | None]], repeat: int) -> dict[str, list[float]]:
    """Run every case once per round, ``repeat`` rounds, so that load on a shared machine falls on
    all sides alike. A case returns its own seconds (e.g. measured in a child process) or None to
    be timed here."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            t = time.perf_counter()
            own = fn()
            times[name].append(own if own is not None else time.perf_counter() - t)
    return times


def spread(values: list[float], scale: float = 1.0, fmt: str = ",.0f") -> str:
    """``min / median / max`` of ``values`` times ``scale``."""
    v = sorted(x * scale for x in values)
    return f"{v[0]:{fmt}} / {statistics.median(v):{fmt}} / {v[-1]:{fmt}}"


def rate_spread(count: float, seconds: list[float], fmt: str = ",.0f") -> str:
    """Rates ``count / s`` as min / median / max (the slowest run gives the minimum)."""
    return spread([count / s for s in seconds], fmt=fmt)
