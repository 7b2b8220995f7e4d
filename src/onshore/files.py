"""Files: output paths a person names, checked before any work (or any ledger entry) is done,
TOML files a person hands in, and the SHA-256 of a file, read in chunks so a large shard or
model never sits in memory."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

from onshore.errors import ValidationError
from onshore.i18n import N_, Message


def check_output_file(path: Path, force: bool = False, option: str = "--out") -> Path:
    """``path`` if a new file can be written there (or, with ``force``, an old one replaced).

    Refuses a folder, a missing parent folder, a parent that is a file, and an existing file
    unless ``force``; each message names ``option`` and says what to do.
    """
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ValidationError(Message(N_("{option} {path}: is a folder; give a file name"),
                                      {"option": option, "path": path}))
    if not parent.exists():
        raise ValidationError(Message(N_("{option} {path}: folder {parent} does not exist; create it first"),
                                      {"option": option, "path": path, "parent": parent}))
    if not parent.is_dir():
        raise ValidationError(Message(N_("{option} {path}: {parent} is a file, not a folder"),
                                      {"option": option, "path": path, "parent": parent}))
    if path.exists() and not force:
        raise ValidationError(Message(N_("{option} {path}: already exists; choose a new name or pass --force to "
                                         "replace it"), {"option": option, "path": path}))
    return path


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document at ``path``; a missing file or bad TOML is refused, naming the file
    (``what`` says which kind of file was expected, e.g. "embodiment")."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValidationError(Message(N_("{path}: no such {what} file"), {"path": path, "what": what})) from None
    except tomllib.TOMLDecodeError as e:
        raise ValidationError(Message(N_("{path}: not valid TOML ({error})"), {"path": path, "error": e})) from None


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
