"""Confidence intervals for success rates."""

from __future__ import annotations

import math

from onshore.errors import ValidationError

Z95 = 1.959963984540054  # two-sided 95 % standard normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default), as ``(low, high)``.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes
    and for the small episode counts evaluations use. Refused (``ValidationError``): ``trials``
    below 1, ``successes`` outside ``0..trials``.
    """
    if trials < 1:
        raise ValidationError(f"a success rate needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValidationError(f"successes must be between 0 and {trials}, got {successes}")
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # At 0 or n successes the bound is exactly 0 or 1; floating point can miss it by an ulp.
    if successes == 0:
        low = 0.0
    if successes == trials:
        high = 1.0
    return low, high
