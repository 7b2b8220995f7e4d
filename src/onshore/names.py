"""The one validator for names, principals and free text that people type.

A name (site, member, dataset, embodiment, witness, purpose) becomes a folder and a Cedar entity id,
so it is kept to a safe ASCII alphabet: lowercase letters, digits and '-', 1 to 64 characters,
starting with a letter or digit. The whole string must match (a trailing newline is not "the same
name"), so slashes, '..', spaces, capitals, control characters and the empty string are refused.

A principal is ``site:NAME`` or ``member:NAME`` (or the log, ``log``, for governance entries),
with NAME a valid name. Free text (an operator, a workspace's display name) may be any Unicode,
but must already be in NFC form and hold no control characters, so that what a person sees in a
listing is what was signed into the ledger.
"""

from __future__ import annotations

import re
import unicodedata

from onshore.errors import ValidationError

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
PRINCIPAL_KINDS = ("site", "member")
LOG_PRINCIPAL = "log"
MAX_TEXT = 256


def check_name(name: str, what: str) -> str:
    """Return ``name`` unchanged if it is a valid name for a ``what`` (e.g. "site"); else raise.

    Full match only: ``"sakai\\n"`` is refused, as are non-ASCII look-alikes of ASCII letters.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"invalid {what} name {name!r}: use 1 to 64 lowercase letters, digits and '-', "
            "starting with a letter or digit (no slashes, dots, spaces or control characters)"
        )
    return name


def is_name(name: object) -> bool:
    """True when ``name`` would pass :func:`check_name`."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def parse_principal(principal: str, allow_log: bool = False) -> tuple[str, str]:
    """Split ``site:NAME`` / ``member:NAME`` into (kind, name); refuse anything else.

    ``allow_log`` also accepts the log's own principal, ``log``, returned as ("log", "").
    """
    if allow_log and principal == LOG_PRINCIPAL:
        return LOG_PRINCIPAL, ""
    if not isinstance(principal, str):
        raise ValidationError(f"invalid principal {principal!r}: use site:NAME or member:NAME")
    kind, sep, name = principal.partition(":")
    if not sep or kind not in PRINCIPAL_KINDS or not is_name(name):
        raise ValidationError(
            f"invalid principal {principal!r}: use site:NAME or member:NAME, where NAME is 1 to 64 "
            "lowercase letters, digits and '-'"
        )
    return kind, name


def check_principal(principal: str, allow_log: bool = False) -> str:
    """Return ``principal`` unchanged if :func:`parse_principal` accepts it; else raise."""
    parse_principal(principal, allow_log)
    return principal


def check_text(text: str, what: str, allow_empty: bool = True) -> str:
    """Return free ``text`` unchanged if it is NFC, has no control characters and is not too long.

    Refuses rather than normalises: the ledger signs the bytes given, and two spellings of one
    name that look the same in a listing must not both be accepted.
    """
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be text")
    if not text and not allow_empty:
        raise ValidationError(f"{what} must not be empty")
    if len(text) > MAX_TEXT:
        raise ValidationError(f"{what} is {len(text)} characters long; keep it under {MAX_TEXT}")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ValidationError(f"{what} {text!r} holds the control character U+{ord(bad):04X}; remove it")
    if unicodedata.normalize("NFC", text) != text:
        raise ValidationError(f"{what} {text!r} is not in Unicode NFC form; retype it or normalise it to NFC")
    if text != text.strip():
        raise ValidationError(f"{what} {text!r} starts or ends with white space; remove it")
    return text
