"""Model files on disk: safetensors weights plus a JSON document beside them.

This is the only module that reads or writes model and checkpoint bytes, so that encryption at
rest (a later issue) replaces two functions. Writes are atomic (temporary name, fsync, rename);
reads check the SHA-256 of every file against what the caller expects (the catalog or a
checkpoint's own record) and refuse a mismatch with ``IntegrityError``.

An artifact ``STEM`` in a folder is ``STEM.safetensors`` + ``STEM.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from onshore.errors import IntegrityError, NotFoundError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_artifact(folder: Path, stem: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                   ) -> dict[str, str]:
    """Write ``STEM.safetensors`` then ``STEM.json`` under ``folder``; returns {file name: sha256}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(weights, lambda p: save_file(plain, str(p)))
    doc = folder / f"{stem}.json"
    _atomic_write(doc, lambda p: p.write_text(json.dumps(meta, indent=1, sort_keys=True)))
    return {weights.name: sha256_file(weights), doc.name: sha256_file(doc)}


def read_artifact(folder: Path, stem: str, expect: dict[str, str] | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact; with ``expect`` ({file name: sha256}), refuse any file whose digest differs."""
    folder = Path(folder)
    weights, doc = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    for p in (weights, doc):
        if not p.is_file():
            raise NotFoundError(f"{p}: model file missing")
        if expect is not None:
            want = expect.get(p.name)
            got = sha256_file(p)
            if want != got:
                raise IntegrityError(f"{p}: SHA-256 {got} differs from the recorded {want}; "
                                     "the file was altered or replaced")
    return load_file(str(weights)), json.loads(doc.read_text())


def digests(folder: Path, stem: str) -> dict[str, str]:
    """{file name: sha256} of an artifact as it is on disk."""
    folder = Path(folder)
    return {p.name: sha256_file(p) for p in (folder / f"{stem}.safetensors", folder / f"{stem}.json")}
