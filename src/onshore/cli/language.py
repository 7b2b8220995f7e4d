"""The language of the command line: ``--lang en|ja`` anywhere before ``--``, else the environment.

Only what people read changes (error lines, refusals, help summaries); ``--json`` output, rule
ids, names and ledger entries are the same in every language (onshore.i18n).
"""

from __future__ import annotations

from onshore.errors import UsageError
from onshore.i18n import SUPPORTED, language_from_env, normalize

FLAG = "--lang"


def take_language(args: list[str]) -> tuple[str, list[str]]:
    """The language ``args`` ask for (``--lang ja`` / ``--lang=ja``, the last one wins) and ``args`` without it.

    Without the option: LANGUAGE, LC_ALL, LC_MESSAGES or LANG (``language_from_env``), else
    English. Arguments after ``--`` are left alone. Refused (``UsageError``, exit 2): ``--lang``
    with no value, or a language without a catalogue.
    """
    rest: list[str] = []
    asked: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a == FLAG or a.startswith(FLAG + "="):
            if a == FLAG:
                if i + 1 == len(args):
                    raise UsageError(f"{FLAG} needs a language after it: {', '.join(SUPPORTED)}")
                value, i = args[i + 1], i + 2
            else:
                value, i = a.partition("=")[2], i + 1
            if normalize(value) is None:
                raise UsageError(f"{FLAG} {value!r}: no messages in that language; choose one of "
                                 f"{', '.join(SUPPORTED)}")
            asked = normalize(value)
            continue
        rest.append(a)
        i += 1
    return (asked or language_from_env()), rest
