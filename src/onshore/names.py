"""Names of sites, members, datasets and embodiments.

A name becomes a folder and a Cedar entity id, so it is kept to a safe alphabet: lowercase
letters, digits and '-', 1 to 64 characters, starting with a letter or digit. Slashes, '..',
spaces, capitals and the empty string are refused.
"""

from __future__ import annotations

import re

from onshore.errors import ValidationError

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def check_name(name: str, what: str) -> str:
    """Return ``name`` unchanged if it is a valid name for a ``what`` (e.g. "site"); else raise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            f"invalid {what} name {name!r}: use 1 to 64 lowercase letters, digits and '-', "
            "starting with a letter or digit (no slashes, dots or spaces)"
        )
    return name
