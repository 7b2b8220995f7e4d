"""Shards: immutable, content-addressed, encrypted Parquet files under a site's root.

A shard is written to a temporary name, fsynced, hashed (SHA-256 of the encrypted bytes) and then
renamed to ``datasets/NAME/SHA256.parquet``. A shard no catalog row names is invisible: a
crashed ingest's leftovers are removed by the next ingest under that name, and a killed writer
can leave a file in ``.staging/`` that nothing reads.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onshore.errors import IntegrityError
from onshore.store.encryption import decryption_properties, encryption_properties, new_salt

ROW_GROUP_ROWS = 65536
STAGING = ".staging"


@dataclass(frozen=True)
class ShardInfo:
    sha256: str
    path: str  # relative to the site root
    salt: str  # hex; derives the shard key from the dataset key
    bytes: int
    frames: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def shard_path(dataset: str, sha256: str) -> str:
    return f"datasets/{dataset}/{sha256}.parquet"


def staging_dir(site_root: Path) -> Path:
    return Path(site_root) / STAGING


def write_shard(table: pa.Table, site_root: Path, dataset: str, dataset_key: bytes) -> ShardInfo:
    """Encrypt ``table`` into a new shard at ``site_root``; returns where it sits and its digest."""
    root = Path(site_root)
    stage = staging_dir(root)
    stage.mkdir(parents=True, exist_ok=True)
    tmp = stage / f"{uuid.uuid4().hex}.parquet"
    salt = new_salt()
    try:
        pq.write_table(table, tmp, encryption_properties=encryption_properties(dataset_key, dataset, salt),
                       row_group_size=ROW_GROUP_ROWS, compression="zstd")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = _sha256_file(tmp)
        rel = shard_path(dataset, digest)
        final = root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return ShardInfo(digest, rel, salt.hex(), final.stat().st_size, table.num_rows)
    finally:
        tmp.unlink(missing_ok=True)


def check_shard(site_root: Path, rel: str, sha256: str) -> Path:
    """The shard's path, after checking its bytes still hash to ``sha256``."""
    path = Path(site_root) / rel
    if not path.exists():
        raise IntegrityError(f"shard {path} is missing from its site")
    actual = _sha256_file(path)
    if actual != sha256:
        raise IntegrityError(
            f"shard {path} was altered: SHA-256 is {actual}, the catalog and ledger say {sha256}"
        )
    return path


def _open_error(path: Path, sha256: str, e: Exception) -> IntegrityError:
    """Name the cause of a failed decryption: altered bytes, or a key that does not fit."""
    if not path.exists():
        return IntegrityError(f"shard {path} is missing from its site")
    if _sha256_file(path) != sha256:
        return IntegrityError(f"shard {path} was altered: its SHA-256 no longer matches the catalog and ledger")
    return IntegrityError(f"shard {path} does not decrypt with the released dataset key: {e}")


def read_shard(site_root: Path, rel: str, sha256: str, salt: str, dataset: str, dataset_key: bytes
               ) -> pa.Table:
    """Decrypt and read the whole shard.

    No separate SHA-256 pass: every page and the footer carry an AES-GCM tag bound to this
    shard's AAD prefix, so any altered byte (or a shard swapped in from elsewhere) fails to
    decrypt; the digest is then computed only to say which it was.
    """
    path = Path(site_root) / rel
    props = decryption_properties(dataset_key, dataset, bytes.fromhex(salt))
    try:
        return pq.read_table(path, decryption_properties=props)
    except OSError as e:
        raise _open_error(path, sha256, e) from None


def iter_shard_batches(site_root: Path, rel: str, sha256: str, salt: str, dataset: str,
                       dataset_key: bytes, batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream a shard's frames; authenticated as in ``read_shard``."""
    path = Path(site_root) / rel
    props = decryption_properties(dataset_key, dataset, bytes.fromhex(salt))
    try:
        pf = pq.ParquetFile(path, decryption_properties=props)
        yield from pf.iter_batches(batch_size=batch_size)
    except OSError as e:
        raise _open_error(path, sha256, e) from None


COPY_CHUNK = 8 << 20


def copy_shard(src_root: Path, dst_root: Path, rel: str, sha256: str,
               progress: Callable[[int], None] | None = None) -> int:
    """Copy a shard's bytes unchanged (they stay encrypted) and check the copy's digest.

    ``progress`` is called with the number of bytes copied so far, chunk by chunk.
    """
    src = check_shard(src_root, rel, sha256)
    stage = staging_dir(dst_root)
    stage.mkdir(parents=True, exist_ok=True)
    tmp = stage / f"{uuid.uuid4().hex}.parquet"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            done = 0
            while chunk := fin.read(COPY_CHUNK):
                fout.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done)
            fout.flush()
            os.fsync(fout.fileno())
        if _sha256_file(tmp) != sha256:
            raise IntegrityError(f"copy of shard {rel} to {dst_root} changed its bytes")
        final = Path(dst_root) / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return final.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)
