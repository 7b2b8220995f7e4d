"""Files named on the command line: read them, or say which one is missing and what it should be."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onshore.errors import IntegrityError, UsageError, ValidationError
from onshore.i18n import N_, Message


def usage(message: str) -> UsageError:
    """A missing or conflicting option (exit 2, as a required option click finds missing); the
    message ends by pointing at the command's --help."""
    return UsageError(f"{message} (see --help)")


def read_input(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a missing file or a folder is a ValidationError naming ``what``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ValidationError(Message(N_("{path}: no such {what} file"), {"path": path, "what": what})) from None
    except IsADirectoryError:
        raise ValidationError(Message(N_("{path}: is a folder, not a {what} file"), {"path": path, "what": what})) \
            from None
    except NotADirectoryError:
        raise ValidationError(Message(N_("{path}: a part of this path is a file, not a folder"), {"path": path})) \
            from None
    except PermissionError:
        raise ValidationError(Message(N_("{path}: permission denied reading the {what} file"),
                                      {"path": path, "what": what})) from None


def read_text_input(path: Path, what: str) -> str:
    """``read_input`` as UTF-8 text; a binary file is a ValidationError naming it."""
    try:
        return read_input(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(Message(N_("{path}: not a {what} file (not UTF-8 text)"),
                                      {"path": path, "what": what})) from None


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Errors about what ``path`` holds (malformed, badly signed) name the file, if they do not already."""
    try:
        yield
    except (ValidationError, IntegrityError) as e:
        if str(path) not in str(e):  # kept a Message, so the file's name does not cost the translation
            e.args = (Message("{path}: {error}", {"path": path, "error": e.message}), *e.args[1:])
        raise
