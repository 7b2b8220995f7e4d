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


def episode_fingerprints(table: pa.Table) -> list[str]:
    """One fingerprint per episode of a validated frame table, in episode order."""
    if table.num_rows == 0:
        return []
    t = table.sort_by([(F.EPISODE, "ascending"), (F.FRAME, "ascending")])
    ep = t.column(F.EPISODE).to_numpy()
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ep)) + 1))
    ends = np.append(starts[1:], len(ep))
    cols = []
    for name in (F.STATE, F.ACTION):
        flat = t.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).astype("<f4", copy=False)
        cols.append(flat.reshape(len(ep), -1))
    state, action = cols
    header = f"onshore-episode:v1:{state.shape[1]}:{action.shape[1]}:".encode()
    out = []
    for s, e in zip(starts, ends, strict=True):
        h = hashlib.sha256(header)
        h.update(np.ascontiguousarray(state[s:e]).tobytes())
        h.update(np.ascontiguousarray(action[s:e]).tobytes())
        out.append(h.hexdigest()[:_FINGERPRINT_HEX])
    return out
