"""Model files on disk: safetensors weights plus a JSON document beside them, sealed at rest.

This is the only module that reads or writes model and checkpoint bytes. An artifact ``STEM`` in
a folder is ``STEM.safetensors.sealed`` + ``STEM.json.sealed``: each file is the plaintext
(safetensors, or JSON) sealed with the artifact's data key (``keys/sealed.py``, AES-256-GCM),
bound to the artifact's ``context`` and the file's plaintext name, so a sealed file moved to
another artifact, model or name does not open. The data key comes from the site's key service;
plaintext never touches the disk at a site. Writes are atomic (temporary name, fsync, rename).

Every artifact has two digests per file: the SHA-256 of the plaintext (``model.safetensors``:
what the model *is*, what an export writes and an attestation names) and the SHA-256 of the
sealed file on disk (what a copy moves and an auditor can match against storage). Reads check
both against what the caller expects (the ledger or a checkpoint's own record) and refuse a
mismatch with ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onshore.errors import IntegrityError, NotFoundError
from onshore.files import sha256_file
from onshore.keys.sealed import seal, unseal

if TYPE_CHECKING:
    import torch

SEALED_SUFFIX = ".sealed"


@dataclass(frozen=True)
class Written:
    """The digests of an artifact: ``files`` {plaintext name: SHA-256 of the plaintext} and
    ``sealed`` {sealed file name: SHA-256 of the sealed bytes on disk}."""

    files: dict[str, str]
    sealed: dict[str, str]



def file_names(stem: str) -> tuple[str, str]:
    """The plaintext names of an artifact's two files: weights, then the JSON document."""
    return f"{stem}.safetensors", f"{stem}.json"


def sealed_name(plain: str) -> str:
    return plain + SEALED_SUFFIX


def _aad(context: str, plain: str) -> bytes:
    return f"onshore-artifact:v1:{context}:{plain}".encode()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plaintexts(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[bytes, bytes]:
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    from safetensors.torch import save as save_bytes  # torch only where tensors are: listings stay light

    return save_bytes(plain), json.dumps(meta, indent=1, sort_keys=True).encode()


def write_artifact(folder: Path, stem: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   key: bytes, context: str) -> Written:
    """Seal the weights then the JSON of artifact ``stem`` into ``folder`` under ``key``; returns digests."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files, sealed = {}, {}
    for name, data in zip(file_names(stem), _plaintexts(tensors, meta), strict=True):
        blob = seal(key, data, _aad(context, name))
        _atomic_write(folder / sealed_name(name), blob)
        files[name] = hashlib.sha256(data).hexdigest()
        sealed[sealed_name(name)] = hashlib.sha256(blob).hexdigest()
    return Written(files, sealed)


def read_plaintexts(folder: Path, stem: str, key: bytes, context: str, expect: dict[str, str],
                    expect_sealed: dict[str, str] | None = None) -> dict[str, bytes]:
    """The plaintext bytes of each file of an artifact, after every digest check.

    ``expect``: {plaintext name: SHA-256}, required; ``expect_sealed``: {sealed name: SHA-256},
    checked first when given. Refuses (IntegrityError) a sealed file whose digest differs, one
    that does not open (altered, or another artifact's), and plaintext whose digest differs;
    (NotFoundError) a missing file.
    """
    folder = Path(folder)
    out = {}
    for name in file_names(stem):
        path = folder / sealed_name(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{path}: model file missing") from None
        if expect_sealed is not None:
            want, got = expect_sealed.get(path.name), hashlib.sha256(blob).hexdigest()
            if want != got:
                raise IntegrityError(f"{path}: SHA-256 {got} differs from the recorded {want}; "
                                     "the file was altered or replaced")
        data = unseal(key, blob, _aad(context, name), str(path))
        want, got = expect.get(name), hashlib.sha256(data).hexdigest()
        if want != got:
            raise IntegrityError(f"{path}: plaintext SHA-256 {got} differs from the recorded {want}; "
                                 "the file was altered or replaced")
        out[name] = data
    return out


def read_artifact(folder: Path, stem: str, key: bytes, context: str, expect: dict[str, str],
                  expect_sealed: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Open an artifact (see :func:`read_plaintexts` for what is refused): tensors and the JSON."""
    weights, doc = file_names(stem)
    data = read_plaintexts(folder, stem, key, context, expect, expect_sealed)
    from safetensors.torch import load as load_bytes

    return load_bytes(data[weights]), json.loads(data[doc])


def sealed_digests(folder: Path, stem: str) -> dict[str, str]:
    """{sealed file name: SHA-256} of an artifact as it is on disk."""
    folder = Path(folder)
    return {sealed_name(n): sha256_file(folder / sealed_name(n)) for n in file_names(stem)}


def copy_sealed(src: Path, dst: Path, stem: str, expect_sealed: dict[str, str]) -> list[Path]:
    """Copy an artifact's sealed files as they are (same data key) from ``src`` to ``dst``.

    Each copy is checked against ``expect_sealed`` before it takes its final name; a mismatch
    (IntegrityError) leaves nothing behind. Returns the files written.
    """
    dst.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for name in file_names(stem):
            blob = (Path(src) / sealed_name(name)).read_bytes()
            got = hashlib.sha256(blob).hexdigest()
            if got != expect_sealed.get(sealed_name(name)):
                raise IntegrityError(f"{Path(src) / sealed_name(name)}: SHA-256 {got} differs from the recorded "
                                     f"{expect_sealed.get(sealed_name(name))}; not copied")
            target = dst / sealed_name(name)
            _atomic_write(target, blob)
            written.append(target)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


def write_plain(out: Path, plaintexts: dict[str, bytes]) -> dict[str, str]:
    """Write decrypted files into the folder ``out`` (an export); returns {name: SHA-256}."""
    out.mkdir(parents=True, exist_ok=True)
    for name, data in plaintexts.items():
        _atomic_write(out / name, data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in plaintexts.items()}


def read_plain_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the plain file ``path``, read once and never through a symbolic link (``O_NOFOLLOW``).

    Refuses (IntegrityError) a link, a non-regular file and, with ``limit``, one larger than
    ``limit`` bytes; (NotFoundError) a missing file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise NotFoundError(f"{path}: file missing") from None
    except OSError as e:  # ELOOP: a symbolic link
        raise IntegrityError(f"{path}: not a plain file ({e.strerror}); files are never followed through "
                             "links here") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{path}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise IntegrityError(f"{path}: {st.st_size} bytes, more than the {limit} expected")
        return f.read()


def read_plain(folder: Path, expect: dict[str, str]) -> dict[str, bytes]:
    """The bytes of each plaintext file ``expect`` names in ``folder`` (an export), after its digest check.

    Each file is read once (:func:`read_plain_file`), so what was checked is what the caller uses.
    Refuses (IntegrityError) a file whose SHA-256 differs from ``expect`` and a link or non-regular
    file; (NotFoundError) a missing one.
    """
    out = {}
    for name, want in expect.items():
        path = Path(folder) / name
        data = read_plain_file(path)
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise IntegrityError(f"{path}: SHA-256 {got} differs from the recorded {want}; the file was altered "
                                 "or replaced")
        out[name] = data
    return out


def load_plain(folder: Path, stem: str, expect: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Open an exported artifact's plaintext files (see :func:`read_plain`): tensors and the JSON."""
    weights, doc = file_names(stem)
    data = read_plain(folder, {n: expect.get(n, "") for n in (weights, doc)})
    from safetensors.torch import load as load_bytes

    return load_bytes(data[weights]), json.loads(data[doc])
