"""Files named on the command line: read them, or say which one is missing and what it should be."""

from __future__ import annotations

from pathlib import Path

from onshore.errors import ValidationError


def read_input(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a missing file or a folder is a ValidationError naming ``what``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ValidationError(f"{path}: is a folder, not a {what} file") from None
