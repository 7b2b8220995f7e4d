"""What people read, in their language: gettext catalogues under ``onshore/locale``, English by default.

The catalogue is ``locale/<lang>/LC_MESSAGES/onshore.po`` (extracted with Babel: ``babel.cfg``,
``make messages``), compiled to the ``.mo`` beside it that ships in the package. The English text
in the source is the message id, so a missing or partial catalogue falls back to English, phrase
by phrase. Only words meant for people are translated: rule ids, dataset, site and member names,
JSON fields, ledger entry kinds, actions and Cedar stay as they are in every language.

A message with fields is a ``Message``: a template with named ``str.format`` placeholders and the
values to put in them. Library code raises errors carrying one
(``raise NotFoundError(Message(N_("no {kind} named {name!r}"), {"kind": ..., "name": ...}))``; the
English text stays what an f-string would have made); a front end renders it in the reader's
language with ``render``, the template translated, the values untouched (a value that is itself a
``Message`` is rendered the same way, so a fragment such as a place or a hint is translated too).

The language is chosen by the front end: the CLI from ``--lang`` or the environment
(``language_from_env``), the dashboard from ``Accept-Language`` (``language_from_accept``). This
module keeps no "current language": every lookup names its translator.
"""

from __future__ import annotations

import functools
import gettext
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "onshore"
LOCALE_DIR = Path(__file__).parent / "locale"
DEFAULT = "en"
#: Languages with a catalogue (English is the source text itself).
SUPPORTED = ("en", "ja")


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it here (it is translated where it is shown)."""
    return message


@dataclass(frozen=True)
class Message:
    """A template with named placeholders (``str.format``) and its values; ``str()`` is the English text."""

    template: str
    params: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return render(self, translator(DEFAULT))


def normalize(tag: str | None) -> str | None:
    """The supported language a locale or language tag names (``ja_JP.UTF-8``, ``ja-JP``, ``JA``), else None.

    ``C`` and ``POSIX`` (no locale) are English.
    """
    if not tag:
        return None
    tag = tag.strip()
    if tag in ("C", "POSIX") or tag.startswith(("C.", "POSIX.")):
        return DEFAULT
    primary = re.split(r"[-_.@]", tag, maxsplit=1)[0].lower()
    return primary if primary in SUPPORTED else None


def language_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The language the environment asks for, as gettext reads it: LANGUAGE, LC_ALL, LC_MESSAGES, LANG.

    ``LANGUAGE`` may list several (``ja:en``): the first supported one wins. The first variable
    that is set decides; a language without a catalogue, or none set at all, is English.
    """
    env = os.environ if environ is None else environ
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var, "")
        if not value:
            continue
        for part in value.split(":"):
            lang = normalize(part)
            if lang is not None:
                return lang
        return DEFAULT
    return DEFAULT


def language_from_accept(header: str | None) -> str:
    """The supported language an HTTP ``Accept-Language`` header prefers most (RFC 9110 q-values).

    ``ja,en;q=0.8`` is Japanese; ``fr, en;q=0.5`` English; a malformed entry is skipped; ``*``,
    an empty or missing header, or nothing supported is English.
    """
    best, best_q = DEFAULT, -1.0
    for item in (header or "")[:2000].split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        m = re.fullmatch(r"\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*", params) if params else None
        if params and m is None:
            continue
        if m is not None:
            q = float(m.group(1))
        lang = normalize(tag)
        if lang is None or q <= 0:
            continue
        # the earlier of two equal weights wins: keep strictly greater only
        if q > best_q:
            best, best_q = lang, q
    return best


@functools.cache
def translator(lang: str) -> gettext.NullTranslations:
    """The translations for ``lang`` (a SUPPORTED code); English, or a missing catalogue, translates nothing."""
    if lang == DEFAULT or lang not in SUPPORTED:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, [lang], fallback=True)


def render(message: Message | str, tr: gettext.NullTranslations) -> str:
    """``message`` in ``tr``'s language: the template translated, then filled with its values.

    A translation whose placeholders do not fit the values (a broken catalogue) falls back to
    the English template rather than failing: an error message must always print.
    """
    if isinstance(message, str):
        return tr.gettext(message)
    params = {k: render(v, tr) if isinstance(v, Message) else v for k, v in message.params.items()}
    try:
        return tr.gettext(message.template).format(**params)
    except (KeyError, IndexError, ValueError, AttributeError):
        return message.template.format(**params)
