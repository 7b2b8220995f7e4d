"""Shards: immutable, content-addressed, encrypted Parquet files under a site's root.

One way to write them: a ``ShardWriter`` streams frames into shards, each written to a temporary
name, fsynced, hashed (SHA-256 of the encrypted bytes) and renamed to its digest inside a staging
folder of the caller's own (``.staging/ATTEMPT/``, see onshore.workspace.attempts); ``copy_shard``
stages a copy of an existing shard the same way. Only :func:`publish`, called once it is the
caller's turn to commit, moves a staged shard to ``datasets/NAME/SHA256.parquet``, so two attempts
never touch each other's files. A shard no catalog row names is invisible; `onshore doctor
--repair` removes such leftovers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onshore.errors import IntegrityError
from onshore.files import sha256_file

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

# pyarrow (and the Parquet encryption built on it) is imported by the functions that write or read
# shard bytes: the catalog's bookkeeping (paths, staging, publish) imports this module for commands
# that only list, which must start in a fraction of a second (issue 22)

ROW_GROUP_ROWS = 65536
STAGING = ".staging"


@dataclass(frozen=True)
class ShardInfo:
    sha256: str
    path: str  # relative to the site root
    salt: str  # hex; derives the shard key from the dataset key
    bytes: int
    frames: int



def shard_path(dataset: str, sha256: str) -> str:
    return f"datasets/{dataset}/{sha256}.parquet"


def staging_dir(site_root: Path) -> Path:
    return Path(site_root) / STAGING


def _staged(stage: Path, rel: str) -> Path:
    return Path(stage) / Path(rel).name


def publish(stage: Path, site_root: Path, rel: str) -> Path:
    """Move a shard staged in ``stage`` (by ``ShardWriter`` or ``copy_shard``) to ``rel`` under the site root."""
    final = Path(site_root) / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(_staged(stage, rel), final)
    return final


class ShardWriter:
    """Streams frames into encrypted shards of at most ``max_frames`` frames each, in ``stage``.

    ``stage`` is a folder of the caller's own (an attempt's ``.staging/ATTEMPT/``, never shared
    by name). Each shard is written there under a temporary name, fsynced, hashed and renamed
    to its digest when it is full or on ``close``; it stays in ``stage`` until the caller moves
    it into place with :func:`publish` (``ShardInfo.path`` says where). Memory holds one Parquet
    row group, whatever the size of the stream. ``abort`` removes every file this writer left in
    ``stage`` (shards already published are the caller's). Every table written must have ``schema``.
    """

    def __init__(self, stage: Path, dataset: str, dataset_key: bytes, schema: pa.Schema,
                 max_frames: int | None = None) -> None:
        self.stage = Path(stage)
        self.dataset = dataset
        self.schema = schema
        self.max_frames = max_frames
        self.shards: list[ShardInfo] = []
        self._key = dataset_key
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._salt = b""
        self._frames = 0

    def write(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                self._open()
            room = table.num_rows - start if self.max_frames is None else self.max_frames - self._frames
            part = table.slice(start, room)
            assert self._writer is not None
            self._writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
            self._frames += part.num_rows
            start += part.num_rows
            if self.max_frames is not None and self._frames >= self.max_frames:
                self._finish()

    def close(self) -> list[ShardInfo]:
        """Finish the open shard (if any frames went into it); returns every shard written (staged)."""
        if self._writer is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written and every finished shard still staged."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        for s in self.shards:
            _staged(self.stage, s.path).unlink(missing_ok=True)

    def _open(self) -> None:
        import pyarrow.parquet as pq

        from onshore.store.encryption import encryption_properties, new_salt

        self.stage.mkdir(parents=True, exist_ok=True)
        self._tmp = self.stage / f"{uuid.uuid4().hex}.tmp"
        self._salt = new_salt()
        self._frames = 0
        self._writer = pq.ParquetWriter(
            self._tmp, self.schema, compression="zstd",
            encryption_properties=encryption_properties(self._key, self.dataset, self._salt))

    def _finish(self) -> None:
        assert self._writer is not None and self._tmp is not None
        self._writer.close()
        self._writer = None
        tmp, self._tmp = self._tmp, None
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            digest = sha256_file(tmp)
            rel = shard_path(self.dataset, digest)
            size = tmp.stat().st_size
            os.replace(tmp, _staged(self.stage, rel))
        finally:
            tmp.unlink(missing_ok=True)
        self.shards.append(ShardInfo(digest, rel, self._salt.hex(), size, self._frames))


def check_shard(site_root: Path, rel: str, sha256: str) -> Path:
    """The shard's path, after checking its bytes still hash to ``sha256``."""
    path = Path(site_root) / rel
    if not path.exists():
        raise IntegrityError(f"shard {path} is missing from its site")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(
            f"shard {path} was altered: SHA-256 is {actual}, the catalog and ledger say {sha256}"
        )
    return path


def _open_error(path: Path, sha256: str, e: Exception) -> IntegrityError:
    """Name the cause of a failed decryption: altered bytes, or a key that does not fit."""
    if not path.exists():
        return IntegrityError(f"shard {path} is missing from its site")
    if sha256_file(path) != sha256:
        return IntegrityError(f"shard {path} was altered: its SHA-256 no longer matches the catalog and ledger")
    return IntegrityError(f"shard {path} does not decrypt with the released dataset key: {e}")


def read_shard(site_root: Path, rel: str, sha256: str, salt: str, dataset: str, dataset_key: bytes
               ) -> pa.Table:
    """Decrypt and read the whole shard.

    No separate SHA-256 pass: every page and the footer carry an AES-GCM tag bound to this
    shard's AAD prefix, so any altered byte (or a shard swapped in from elsewhere) fails to
    decrypt; the digest is then computed only to say which it was.
    """
    import pyarrow.parquet as pq

    from onshore.store.encryption import decryption_properties

    path = Path(site_root) / rel
    props = decryption_properties(dataset_key, dataset, bytes.fromhex(salt))
    try:
        return pq.read_table(path, decryption_properties=props)
    except OSError as e:
        raise _open_error(path, sha256, e) from None


def iter_shard_batches(site_root: Path, rel: str, sha256: str, salt: str, dataset: str,
                       dataset_key: bytes, batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream a shard's frames; authenticated as in ``read_shard``."""
    import pyarrow.parquet as pq

    from onshore.store.encryption import decryption_properties

    path = Path(site_root) / rel
    props = decryption_properties(dataset_key, dataset, bytes.fromhex(salt))
    try:
        pf = pq.ParquetFile(path, decryption_properties=props, pre_buffer=False)  # memory flat (see inputs)
        yield from pf.iter_batches(batch_size=batch_size)
    except OSError as e:
        raise _open_error(path, sha256, e) from None


COPY_CHUNK = 8 << 20


def copy_shard(src_root: Path, dst_root: Path, rel: str, sha256: str, stage: Path,
               progress: Callable[[int], None] | None = None) -> int:
    """Copy a shard's bytes unchanged (they stay encrypted) into ``stage`` and check the copy's digest.

    The copy waits in ``stage`` (a folder of the caller's own) for :func:`publish`, as a
    ``ShardWriter``'s shards do. ``progress`` is called with the number of bytes copied so far,
    chunk by chunk. Refused (IntegrityError): a source missing or not matching ``sha256``, or a
    copy whose bytes differ from it.
    """
    src = check_shard(src_root, rel, sha256)
    folder = Path(stage)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{uuid.uuid4().hex}.tmp"
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
        if sha256_file(tmp) != sha256:
            raise IntegrityError(f"copy of shard {rel} to {dst_root} changed its bytes")
        size = tmp.stat().st_size
        os.replace(tmp, _staged(folder, rel))
        return size
    finally:
        tmp.unlink(missing_ok=True)
