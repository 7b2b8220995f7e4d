"""Provenance that travels with exported telemetry, and content fingerprints of episodes.

An exported or read-out file says where it came from: Parquet files carry it as key-value
metadata under :data:`PARQUET_KEY`, a LeRobot v3.0 folder as the :data:`INFO_KEY` block of
``meta/info.json`` (and in each of its Parquet files). The block names the source dataset, its
owner, the ledger index of the decision that let the data out, and the policy hashes.

A fingerprint is the SHA-256 of one episode's state and action values (float32, little-endian,
in frame order), without indices or timestamps, so renumbering episodes, shifting time or
converting between Parquet and LeRobot does not change it. Changing any value does: altered
copies are not recognised (see docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.errors import ValidationError
from onshore.telemetry import frames as F

PARQUET_KEY = b"onshore.provenance"
INFO_KEY = "onshore"
#: Column of a LeRobot folder's episode metadata with each episode's block (JSON text).
EPISODE_COLUMN = "onshore/provenance"
FIELDS = ("dataset", "owner", "workspace", "site", "action", "decision_index", "policy_hash", "cedar_hash")
_FINGERPRINT_HEX = 32  # 128 bits: collisions between honest episodes are not a practical concern


def parquet_metadata(provenance: dict[str, Any]) -> dict[bytes, bytes]:
    """The key-value metadata entry for a Parquet schema."""
    return {PARQUET_KEY: json.dumps(provenance, sort_keys=True).encode()}


def with_provenance(table: pa.Table, provenance: dict[str, Any]) -> pa.Table:
    """``table`` with the provenance block added to its schema metadata (kept by pq.write_table)."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **parquet_metadata(provenance)})


def _parse(raw: Any, where: str) -> dict[str, Any]:
    try:
        block = json.loads(raw) if isinstance(raw, bytes | str) else raw
    except ValueError:
        raise ValidationError(f"{where}: the Onshore provenance block is not JSON") from None
    if not isinstance(block, dict) or not isinstance(block.get("dataset"), str) \
            or not isinstance(block.get("owner"), str):
        raise ValidationError(f"{where}: the Onshore provenance block must name 'dataset' and 'owner'")
    return block


def read_provenances(path: Path) -> list[dict[str, Any]]:
    """Every distinct provenance block an input carries, in the order found.

    A Parquet file has at most one. A LeRobot folder has its ``meta/info.json`` block and the
    blocks of its episodes (the :data:`EPISODE_COLUMN` of ``meta/episodes/*/*.parquet``): a
    folder LeRobot's ``aggregate_datasets`` merged from several exports keeps no info block but
    each episode's, which may name different datasets. A block that is not valid is refused
    (``ValidationError`` naming the file); a file that cannot be read is left to the readers.
    """
    path = Path(path)
    found: list[dict[str, Any]] = []
    first = read_provenance(path)
    if first is not None:
        found.append(first)
    if not path.is_dir():
        return found
    seen = {json.dumps(b, sort_keys=True) for b in found}
    for ep in sorted((path / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        try:
            if EPISODE_COLUMN not in pq.read_schema(ep).names:
                continue
            raws = pq.read_table(ep, columns=[EPISODE_COLUMN]).column(0).to_pylist()
        except (OSError, pa.ArrowException):
            continue  # the LeRobot reader names what is wrong with the file
        for raw in dict.fromkeys(r for r in raws if r is not None):
            block = _parse(raw, f"{ep} column {EPISODE_COLUMN!r}")
            key = json.dumps(block, sort_keys=True)
            if key not in seen:
                seen.add(key)
                found.append(block)
    return found


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance block of a Parquet file or LeRobot folder, or None when it carries none."""
    path = Path(path)
    if path.is_dir():
        info = path / "meta" / "info.json"
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            return None  # not ours to judge here: the LeRobot reader names what is wrong
        raw = data.get(INFO_KEY) if isinstance(data, dict) else None
        return None if raw is None else _parse(raw, str(info))
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(PARQUET_KEY)
    return None if raw is None else _parse(raw, str(path))


class EpisodeFingerprints:
    """Fingerprints computed batch by batch over frames in (episode, frame) order.

    An episode may span batches: its state bytes go straight into its hash, its action bytes
    (which the hash takes after all the state) wait in memory until the episode ends, so memory
    holds one episode's actions, not the stream.
    """

    def __init__(self) -> None:
        self._done: dict[int, str] = {}
        self._ep: int | None = None
        self._hash: Any = None
        self._actions: list[bytes] = []

    def feed(self, table: pa.Table) -> None:
        """Add a batch; it must continue the previous one in (episode, frame) order."""
        if table.num_rows == 0:
            return
        ep = table.column(F.EPISODE).to_numpy()
        state, action = (table.column(n).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                         .astype("<f4", copy=False).reshape(len(ep), -1) for n in (F.STATE, F.ACTION))
        starts = np.concatenate(([0], np.flatnonzero(np.diff(ep)) + 1))
        ends = np.append(starts[1:], len(ep))
        for s, e in zip(starts, ends, strict=True):
            if self._ep != int(ep[s]):
                self._close()
                self._ep = int(ep[s])
                header = f"onshore-episode:v1:{state.shape[1]}:{action.shape[1]}:".encode()
                self._hash = hashlib.sha256(header)
            self._hash.update(np.ascontiguousarray(state[s:e]).tobytes())
            self._actions.append(np.ascontiguousarray(action[s:e]).tobytes())

    def _close(self) -> None:
        if self._ep is not None:
            for chunk in self._actions:
                self._hash.update(chunk)
            self._done[self._ep] = self._hash.hexdigest()[:_FINGERPRINT_HEX]
        self._ep, self._hash, self._actions = None, None, []

    def result(self) -> list[str]:
        """One fingerprint per episode, in episode order."""
        self._close()
        return [self._done[e] for e in sorted(self._done)]


def episode_fingerprints(table: pa.Table) -> list[str]:
    """One fingerprint per episode of a validated frame table, in episode order."""
    fp = EpisodeFingerprints()
    fp.feed(table.sort_by([(F.EPISODE, "ascending"), (F.FRAME, "ascending")]))
    return fp.result()
