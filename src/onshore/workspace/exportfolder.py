"""The folder ``onshore model export`` writes, and reading it back without trusting it.

An export folder holds exactly four plain files: ``model.safetensors`` and ``model.json`` (the
model's plaintext, as its ``model.release`` ledger entry recorded their SHA-256), ``README.md``
(its card, as the ``model.export`` entry recorded it) and ``onshore-export.json``, the manifest:
which model version it is, the ledger indices of its release and of the export, and every other
file's SHA-256. The manifest is written last, after the export is recorded, so a folder without
one is an export that did not finish.

A folder is named on the command line by a path that cannot be a model reference: one that
contains a path separator or starts with ``.`` (``./pool-export``, ``exports/pool``,
``/srv/pool``). Model names are lowercase letters, digits and ``-``, so ``pool-export`` alone is
always a model and never a folder.

:func:`read_manifest` checks the folder's layout and its manifest, nothing else: the digests
and ledger entries the manifest names are checked against the workspace's signed ledger by
``models.open_export``. Refused (``IntegrityError``, naming the folder and the entry): a folder
that is a symbolic link or holds one, a sub-folder or any file other than the four, a manifest
that is not the expected JSON, and a manifest naming a file outside the folder.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onshore.errors import IntegrityError, NotFoundError, ValidationError
from onshore.model import io
from onshore.names import check_model_id
from onshore.workspace import modelcard

MANIFEST = "onshore-export.json"
FORMAT = "onshore-export/1"
#: The files of an export besides its manifest, in the order they are checked.
FILES = (*io.file_names("model"), modelcard.FILE)
MAX_MANIFEST = 64 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_folder_ref(text: str) -> bool:
    """True when a ``--policy``/model argument names a folder: it holds a path separator or starts with '.'."""
    return text.startswith(".") or "/" in text or os.sep in text or (os.altsep is not None and os.altsep in text)


@dataclass(frozen=True)
class Manifest:
    """An export's manifest: the model version, its ledger entries, and {file name: SHA-256}."""

    model: str
    release_index: int
    export_index: int
    site: str
    purpose: str | None
    files: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "release_index": self.release_index,
                "export_index": self.export_index, "site": self.site, "purpose": self.purpose, "files": self.files}


def write_manifest(out: Path, manifest: Manifest) -> str:
    """Write the manifest into the export folder ``out`` (last, after the export is recorded); its SHA-256."""
    data = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode()
    return io.write_plain(Path(out), {MANIFEST: data})[MANIFEST]


def _refuse(folder: Path, what: str) -> IntegrityError:
    return IntegrityError(f"{folder}: {what}; nothing was loaded. Use the folder as 'onshore model export' wrote "
                          "it, or export the model again into a new folder")


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the export folder ``folder``, after the layout checks in the module docstring."""
    folder = Path(folder)
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        raise NotFoundError(f"{folder}: no such folder; give the folder 'onshore model export --out' wrote") from None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(folder, "is a symbolic link; give the folder itself")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(folder, "is not a folder")
    names = sorted(os.listdir(folder))
    for name in names:
        mode = os.lstat(folder / name).st_mode
        if stat.S_ISLNK(mode):
            raise _refuse(folder, f"{name!r} is a symbolic link; an export holds only plain files")
        if name not in (MANIFEST, *FILES):
            raise _refuse(folder, f"holds {name!r}, which is not part of an export (it holds only "
                                  f"{', '.join((*FILES, MANIFEST))}); remove it")
        if not stat.S_ISREG(mode):
            raise _refuse(folder, f"{name!r} is not a plain file")
    if MANIFEST not in names:
        raise _refuse(folder, f"has no {MANIFEST} (not an export, or one that did not finish)")
    try:
        data = io.read_plain_file(folder / MANIFEST, MAX_MANIFEST)
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _refuse(folder, f"{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _refuse(folder, f"{MANIFEST}: format is not {FORMAT!r}")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise _refuse(folder, f"{MANIFEST}: 'files' must be an object of file name to SHA-256")
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise _refuse(folder, f"{MANIFEST}: file {name!r} is a path outside the folder")
        if name not in FILES:
            raise _refuse(folder, f"{MANIFEST}: names {name!r}, which is not part of an export")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _refuse(folder, f"{MANIFEST}: the SHA-256 of {name!r} must be 64 lowercase hex digits")
    missing = [n for n in FILES if n not in files]
    if missing:
        raise _refuse(folder, f"{MANIFEST}: lists no SHA-256 for {', '.join(missing)}")
    for key in ("release_index", "export_index"):
        if not isinstance(doc.get(key), int) or isinstance(doc.get(key), bool) or doc[key] < 0:
            raise _refuse(folder, f"{MANIFEST}: {key!r} must be a ledger index (an integer from 0)")
    model = doc.get("model")
    try:
        check_model_id(model)  # type: ignore[arg-type]
    except ValidationError:
        raise _refuse(folder, f"{MANIFEST}: 'model' {model!r} is not a model id (NAME or NAME@VERSION)") from None
    site, purpose = doc.get("site"), doc.get("purpose")
    if not isinstance(site, str) or not (purpose is None or isinstance(purpose, str)):
        raise _refuse(folder, f"{MANIFEST}: 'site' must be a site name and 'purpose' text or null")
    return Manifest(str(model), int(doc["release_index"]), int(doc["export_index"]), site, purpose,
                    {n: str(files[n]) for n in FILES})
