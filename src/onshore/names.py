"""The one validator for names, principals and free text that people type.

A name (site, member, dataset, embodiment, witness, purpose) becomes a folder and a Cedar entity id,
so it is kept to a safe ASCII alphabet: lowercase letters, digits and '-', 1 to 64 characters,
starting with a letter or digit. The whole string must match (a trailing newline is not "the same
name"), so slashes, '..', spaces, capitals, control characters and the empty string are refused.

A principal is ``site:NAME`` or ``member:NAME`` (or the log, ``log``, for governance entries),
with NAME a valid name. Free text (an operator, a workspace's display name) may be any Unicode,
but must already be in NFC form and hold no control characters, so that what a person sees in a
listing is what was signed into the ledger.

Models have versions under one name. A **model id** names one version: ``NAME`` for version 1
(so models made before versions existed keep their id) and ``NAME@V`` for version V >= 2; it is
what the catalog, the ledger, Cedar and key custody use. A **model reference** is what people
type: ``NAME`` (the latest version that is not archived), ``NAME@V`` (that version, ``NAME@1``
included) or ``NAME@ALIAS`` (the version an alias points at); an alias is a name that starts
with a letter, so it never reads as a version number.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from onshore.errors import ValidationError
from onshore.i18n import N_, Message

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
PRINCIPAL_KINDS = ("site", "member")
LOG_PRINCIPAL = "log"
MAX_TEXT = 256
_MODEL_ID = re.compile(r"([a-z0-9][a-z0-9-]{0,63})(?:@([1-9][0-9]{0,5}))?")
_ALIAS = re.compile(r"[a-z][a-z0-9-]{0,63}")
#: The longest model id (the catalog's column width): ``NAME@V`` must fit.
MAX_MODEL_ID = 64
#: The reference suffix that means "the latest version that is not archived", never an alias.
LATEST = "latest"


def check_name(name: str, what: str) -> str:
    """Return ``name`` unchanged if it is a valid name for a ``what`` (e.g. "site"); else raise.

    Full match only: ``"sakai\\n"`` is refused, as are non-ASCII look-alikes of ASCII letters.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(Message(
            N_("invalid {what} name {name!r}: use 1 to 64 lowercase letters, digits and '-', "
               "starting with a letter or digit (no slashes, dots, spaces or control characters)"),
            {"what": what, "name": name}))
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
        raise ValidationError(Message(N_("invalid principal {principal!r}: use site:NAME or member:NAME"),
                                      {"principal": principal}))
    kind, sep, name = principal.partition(":")
    if not sep or kind not in PRINCIPAL_KINDS or not is_name(name):
        raise ValidationError(Message(
            N_("invalid principal {principal!r}: use site:NAME or member:NAME, where NAME is 1 to 64 "
               "lowercase letters, digits and '-'"), {"principal": principal}))
    return kind, name


def check_principal(principal: str, allow_log: bool = False) -> str:
    """Return ``principal`` unchanged if :func:`parse_principal` accepts it; else raise."""
    parse_principal(principal, allow_log)
    return principal


def check_text(text: str, what: str, allow_empty: bool = True, limit: int = MAX_TEXT) -> str:
    """Return free ``text`` unchanged if it is NFC, has no control characters and is not too long.

    Refuses rather than normalises: the ledger signs the bytes given, and two spellings of one
    name that look the same in a listing must not both be accepted.
    """
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be text")
    if not text and not allow_empty:
        raise ValidationError(f"{what} must not be empty")
    if len(text) > limit:
        raise ValidationError(f"{what} is {len(text)} characters long; keep it under {limit}")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ValidationError(f"{what} {text!r} holds the control character U+{ord(bad):04X}; remove it")
    if unicodedata.normalize("NFC", text) != text:
        raise ValidationError(f"{what} {text!r} is not in Unicode NFC form; retype it or normalise it to NFC")
    if text != text.strip():
        raise ValidationError(f"{what} {text!r} starts or ends with white space; remove it")
    return text


def is_model_id(model: object) -> bool:
    """True for ``NAME`` or ``NAME@V`` (V >= 2, no leading zero) of at most ``MAX_MODEL_ID`` characters."""
    if not isinstance(model, str) or len(model) > MAX_MODEL_ID:
        return False
    m = _MODEL_ID.fullmatch(model)
    return m is not None and (m.group(2) is None or int(m.group(2)) >= 2)


def check_model_id(model: str, what: str = "model") -> str:
    """Return ``model`` unchanged if it is a model id (``NAME`` or ``NAME@V``, V >= 2); else raise."""
    if not is_model_id(model):
        raise ValidationError(
            f"invalid {what} id {model!r}: use NAME (version 1) or NAME@V (V >= 2), where NAME is 1 to 64 "
            f"lowercase letters, digits and '-', and the whole id at most {MAX_MODEL_ID} characters")
    return model


def check_alias(alias: str) -> str:
    """Return ``alias`` unchanged if it can name a model version: a name starting with a letter,
    and not the reserved ``latest``; else raise."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise ValidationError(f"invalid alias {alias!r}: use 1 to 64 lowercase letters, digits and '-', starting "
                              "with a letter (a number is a version, not an alias)")
    if alias == LATEST:
        raise ValidationError(f"{LATEST!r} is reserved (NAME@{LATEST} is the latest version); choose another alias")
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: ``version`` or ``alias`` or neither (the latest), never both."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_model_ref(ref: str, what: str = "model") -> ModelRef:
    """Split ``NAME``, ``NAME@V`` or ``NAME@ALIAS`` (``NAME@latest`` is ``NAME``); refuse anything
    else, naming the part that is wrong."""
    if not isinstance(ref, str):
        raise ValidationError(f"invalid {what} {ref!r}: use NAME, NAME@VERSION or NAME@ALIAS")
    name, sep, suffix = ref.partition("@")
    check_name(name, what)
    if not sep or suffix == LATEST:
        return ModelRef(name)
    if suffix.isascii() and suffix.isdigit():
        if suffix.startswith("0") or len(suffix) > 6:
            raise ValidationError(f"invalid version in {what} {ref!r}: a version is a whole number from 1, "
                                  "without leading zeros (e.g. NAME@3)")
        return ModelRef(name, version=int(suffix))
    if not _ALIAS.fullmatch(suffix):
        raise ValidationError(f"invalid {what} {ref!r}: after '@' give a version number (NAME@3) or an alias "
                              "(NAME@production: lowercase letters, digits and '-', starting with a letter)")
    return ModelRef(name, alias=suffix)


def check_resource_name(name: str, kind: str) -> str:
    """``name`` checked as what a ``kind`` of resource is called: a model id for ``"model"``
    (``check_model_id``), a name for anything else (``check_name``)."""
    return check_model_id(name) if kind == "model" else check_name(name, kind)


def model_stem(model: str) -> str:
    """A model id as the start of a dataset name: ``NAME`` stays, ``NAME@V`` becomes ``NAME-vV``."""
    return check_model_id(model).replace("@", "-v")
