"""Embodiment specs: a machine type's state and action channels and its control rate.

Written as TOML (see README); ``Embodiment.from_toml`` refuses anything malformed with a message
naming the file and field: an unknown field (a typo such as ``limit_hi`` would otherwise be
silently ignored), a limit that is not a finite number, ``low`` not below ``high``.
Telemetry is validated against the limits (``onshore.telemetry.validate``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from onshore.errors import ValidationError
from onshore.files import read_toml
from onshore.names import check_name

_KEYS = frozenset({"name", "control_hz", "description", "extra", "state", "action"})
_CHANNEL_KEYS = frozenset({"name", "unit", "low", "high", "max_rate"})


@dataclass(frozen=True)
class Channel:
    """One state or action channel. ``max_rate`` (units per second) applies to actions only."""

    name: str
    unit: str
    low: float
    high: float
    max_rate: float | None = None


@dataclass(frozen=True)
class Embodiment:
    """A machine type: ``state`` and ``action`` channels in order, and the control rate in Hz."""

    name: str
    control_hz: float
    state: tuple[Channel, ...]
    action: tuple[Channel, ...]
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dim(self) -> int:
        return len(self.state)

    @property
    def action_dim(self) -> int:
        return len(self.action)

    def to_dict(self) -> dict[str, Any]:
        def chan(c: Channel) -> dict[str, Any]:
            d = {k: v for k, v in asdict(c).items() if v is not None}
            return d

        out: dict[str, Any] = {"name": self.name, "control_hz": self.control_hz}
        if self.description:
            out["description"] = self.description
        if self.extra:
            out["extra"] = self.extra
        out["state"] = [chan(c) for c in self.state]
        out["action"] = [chan(c) for c in self.action]
        return out

    def digest(self) -> str:
        """SHA-256 of the machine type: its name, control rate and channels (canonical JSON), not
        its free-text parts (``extra``, ``description``). What ``embodiment.add`` entries sign."""
        import hashlib

        from onshore.ledger.entries import canonical_json

        identity = {k: v for k, v in self.to_dict().items() if k not in ("extra", "description")}
        return hashlib.sha256(canonical_json(identity)).hexdigest()

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def write(self, path: Path) -> None:
        Path(path).write_text(self.to_toml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<embodiment>") -> Embodiment:
        """Build from parsed TOML; ``source`` names the file in error messages."""
        def fail(msg: str) -> ValidationError:
            return ValidationError(f"{source}: {msg}")

        unknown = set(data) - _KEYS
        if unknown:
            raise fail(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        if not isinstance(data.get("name"), str):
            raise fail("field 'name' is required and must be a string")
        try:
            name = check_name(data["name"], "embodiment")
        except ValidationError as e:
            raise fail(str(e)) from None
        hz = data.get("control_hz")
        if isinstance(hz, bool) or not isinstance(hz, int | float) or not math.isfinite(hz) or hz <= 0:
            raise fail("field 'control_hz' must be a positive number (control steps per second)")

        def channels(key: str) -> tuple[Channel, ...]:
            raw = data.get(key)
            if not isinstance(raw, list) or not raw:
                raise fail(f"at least one [[{key}]] channel is required")
            seen: set[str] = set()
            out = []
            for i, c in enumerate(raw):
                where = f"[[{key}]] #{i + 1}"
                if not isinstance(c, dict):
                    raise fail(f"{where} must be a table")
                unknown = set(c) - _CHANNEL_KEYS
                if unknown:
                    raise fail(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_CHANNEL_KEYS)}")
                cname, unit = c.get("name"), c.get("unit", "")
                if not isinstance(cname, str) or not cname:
                    raise fail(f"{where}: field 'name' must be a non-empty string")
                if cname in seen:
                    raise fail(f"{where}: channel name {cname!r} is repeated")
                seen.add(cname)
                if not isinstance(unit, str):
                    raise fail(f"{where} ({cname}): field 'unit' must be a string")
                lo, hi = c.get("low"), c.get("high")
                for fname, v in (("low", lo), ("high", hi)):
                    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                        raise fail(f"{where} ({cname}): field '{fname}' must be a finite number "
                                   "(telemetry is checked against it; give the sensor's real range)")
                if not lo < hi:
                    raise fail(f"{where} ({cname}): 'low' ({lo}) must be below 'high' ({hi})")
                rate = c.get("max_rate")
                if rate is not None:
                    if key != "action":
                        raise fail(f"{where} ({cname}): 'max_rate' applies to action channels only")
                    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
                        raise fail(f"{where} ({cname}): 'max_rate' must be a positive number per second")
                out.append(Channel(cname, unit, float(lo), float(hi),
                                   float(rate) if rate is not None else None))
            return tuple(out)

        extra = data.get("extra", {})
        if not isinstance(extra, dict):
            raise fail("field 'extra' must be a table")
        return cls(name=name, control_hz=float(hz), state=channels("state"),
                   action=channels("action"), description=str(data.get("description", "")),
                   extra=extra)

    @classmethod
    def from_toml(cls, path: Path) -> Embodiment:
        return cls.from_dict(read_toml(path, "embodiment"), source=str(path))
