"""Per-member sensor realism: measurement noise, quantisation, and a control rate of its own.

Two members running the same machine type rarely log the same thing: one has noisier
transmitters, one logs through a 16-bit ADC, one samples at a slower rate than the physics. A
:class:`SensorOptions` value describes one member's sensors; generation records it in the
embodiment TOML (``[extra.sensors]``) and in the JSON sidecar so the telemetry says how it
was made.

What it does to a frame:

- noise: Gaussian, standard deviation ``noise`` times the channel's span ``high - low``;
- quantisation: the noisy reading is clipped to ``[low, high]`` (a transmitter saturates) and
  rounded to one of ``2**bits`` evenly spaced levels over that range;
- control rate: the policy is asked for an action every ``1 / control_hz`` seconds; in between,
  the simulator keeps stepping with the last action held (zero-order hold), and only the sampled
  steps become frames. ``None`` means one frame per simulator step.

Only state channels are sensed. Actions are commands the controller issued, recorded exactly.
The policy acts on the sensed state, as a real controller would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onshore.errors import ValidationError
from onshore.telemetry.embodiment import Channel


@dataclass(frozen=True)
class SensorOptions:
    """One member's sensors. The defaults add nothing: exact readings at the simulator's rate.

    Refused (``ValidationError``): negative or non-finite ``noise``, ``bits`` outside 2..32,
    a non-positive ``control_hz``.
    """

    noise: float = 0.0
    quantize: bool = False
    bits: int = 16
    control_hz: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValidationError(
                f"sensor noise must be a finite number >= 0 (a fraction of each channel's span), "
                f"got {self.noise}"
            )
        if not 2 <= int(self.bits) <= 32:
            raise ValidationError(f"quantisation bits must be between 2 and 32, got {self.bits}")
        if self.control_hz is not None and not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ValidationError(f"control rate must be a positive number of Hz, got {self.control_hz}")

    def to_dict(self) -> dict[str, Any]:
        """A TOML/JSON friendly record (no ``None``: an unset control rate is left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def control_period(options: SensorOptions, sim_dt: float) -> float:
    """Seconds between control steps; refuses a rate faster than the simulator can step."""
    if options.control_hz is None:
        return sim_dt
    period = 1.0 / options.control_hz
    # A control step cannot be shorter than a simulator step: there would be nothing new to see.
    if period < sim_dt * (1 - 1e-9):
        raise ValidationError(
            f"control rate {options.control_hz} Hz is faster than the simulator step "
            f"({1.0 / sim_dt:.6g} Hz); choose --control-hz at or below {1.0 / sim_dt:.6g}"
        )
    return period


class Sensor:
    """Applies :class:`SensorOptions` to raw state vectors of one episode.

    ``rng`` must be seeded per episode so the same episode senses the same noise wherever it
    runs.
    """

    def __init__(self, options: SensorOptions, channels: tuple[Channel, ...], rng: np.random.Generator):
        self.options = options
        self.low = np.array([c.low for c in channels], dtype=np.float64)
        self.high = np.array([c.high for c in channels], dtype=np.float64)
        self.span = self.high - self.low
        self.levels = float(2 ** int(options.bits) - 1)
        self.rng = rng

    def sense(self, raw: np.ndarray) -> np.ndarray:
        """The reading a member's sensors would give for the true state ``raw`` (float64)."""
        x = np.asarray(raw, dtype=np.float64).copy()
        if self.options.noise > 0:
            x += self.rng.normal(0.0, 1.0, size=x.shape) * (self.options.noise * self.span)
        if self.options.quantize:
            code = np.rint((np.clip(x, self.low, self.high) - self.low) / self.span * self.levels)
            x = self.low + code * (self.span / self.levels)
        return x
