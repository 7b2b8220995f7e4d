"""Files named on the command line: read them, or say which one is missing and what it should be."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onshore.errors import IntegrityError, UsageError, ValidationError


def usage(message: str) -> UsageError:
    """A missing or conflicting option (exit 2, as a required option click finds missing); the
    message ends by pointing at the command's --help."""
    return UsageError(f"{message} (see --help)")


def read_input(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a missing file or a folder is a ValidationError naming ``what``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ValidationError(f"{path}: is a folder, not a {what} file") from None
    except NotADirectoryError:
        raise ValidationError(f"{path}: a part of this path is a file, not a folder") from None
    except PermissionError:
        raise ValidationError(f"{path}: permission denied reading the {what} file") from None


def read_text_input(path: Path, what: str) -> str:
    """``read_input`` as UTF-8 text; a binary file is a ValidationError naming it."""
    try:
        return read_input(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"{path}: not a {what} file (not UTF-8 text)") from None


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Errors about what ``path`` holds (malformed, badly signed) name the file, if they do not already."""
    try:
        yield
    except (ValidationError, IntegrityError) as e:
        if str(path) not in str(e):
            e.args = (f"{path}: {e}", *e.args[1:])
        raise
