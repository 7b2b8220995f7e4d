"""ISO 3166-1 alpha-2 jurisdiction codes (from pycountry, which tracks the standard)."""

from __future__ import annotations

import functools

from onshore.errors import ValidationError
from onshore.i18n import N_, Message


@functools.cache
def codes() -> frozenset[str]:
    """Every assigned code; pycountry's database is loaded on the first check, not at import."""
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries)


def check_jurisdiction(code: str, where: str = "jurisdiction") -> str:
    """Return ``code`` if it is an assigned ISO 3166-1 alpha-2 code (upper case); else raise."""
    if not isinstance(code, str) or code not in codes():
        hint = (Message(N_(" (did you mean {code!r}?)"), {"code": code.upper()})
                if isinstance(code, str) and code.upper() in codes() else "")
        raise ValidationError(Message(
            N_("{where}: {code!r} is not an ISO 3166-1 alpha-2 country code such as 'JP' or 'US'{hint}"),
            {"where": where, "code": code, "hint": hint}))
    return code


def country_name(code: str) -> str:
    import pycountry

    c = pycountry.countries.get(alpha_2=code)
    return c.name if c else code
