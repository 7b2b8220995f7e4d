"""Durations as people type them: ``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` (the CLI and the dashboard)."""

from __future__ import annotations

import datetime as dt
import re

from onshore.errors import ValidationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``2w``; a ValidationError naming ``option`` otherwise."""
    m = re.fullmatch(r"([0-9]{1,9})([smhdw])", text.strip())
    if m is None:
        raise ValidationError(f"{option} {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 3600s or 2w")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
