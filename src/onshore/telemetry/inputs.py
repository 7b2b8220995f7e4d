"""Telemetry inputs (Parquet frame files, LeRobot v3.0 folders) as one validated stream of batches.

``open_inputs`` reads only the files' footers; ``InputStream.batches`` then reads, validates,
fingerprints (``onshore.telemetry.provenance``) and yields one batch at a time, every batch
cast to one schema for all inputs, so that a caller can encrypt frame files of any size in
constant memory. A Parquet file already in (episode,
frame) order, as every writer we know produces, streams; one that is not is read whole and
sorted (memory then grows with that file). A LeRobot folder is read whole. Refused, with the
file named: an unreadable input, columns that cannot share one type across inputs, an
episode in two inputs, and everything ``FrameValidator`` refuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onshore.errors import ValidationError
from onshore.i18n import N_, Message
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Embodiment
from onshore.telemetry.lerobot import is_lerobot_v3, read_lerobot_v3
from onshore.telemetry.provenance import EpisodeFingerprints
from onshore.telemetry.validate import FrameValidator, TelemetryError, validate_frames

BATCH_FRAMES = 65536


@dataclass
class _Input:
    path: Path
    schema: pa.Schema
    frames: int
    parquet: pq.ParquetFile | None = None  # None: a LeRobot folder, read whole
    table: pa.Table | None = None


def _canonical(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, F.TYPES.get(f.name, f.type)) for f in schema])


def _open(path: Path, emb: Embodiment) -> _Input:
    if path.is_dir():
        if not is_lerobot_v3(path):
            raise ValidationError(Message(N_("{path}: a folder must be a LeRobotDataset v3.0 (meta/info.json missing)"),
                                          {"path": path}))
        # An environment state our export split off is joined back in the embodiment's order.
        table = read_lerobot_v3(path, [c.name for c in emb.state]).table
        return _Input(path, table.schema, table.num_rows, table=table)
    try:
        # pre_buffer off: with it, the reader keeps every column chunk it fetched until the file is
        # closed, and memory grows with the file (150 MB retained after 5M frames).
        pf = pq.ParquetFile(path, pre_buffer=False)
    except FileNotFoundError:
        raise ValidationError(Message(N_("{path}: no such file"), {"path": path})) from None
    except (OSError, pa.ArrowInvalid) as e:
        raise ValidationError(Message(N_("{path}: not a readable Parquet file ({error})"),
                                      {"path": path, "error": e})) from None
    return _Input(path, pf.schema_arrow, pf.metadata.num_rows, parquet=pf)


def _in_order(pf: pq.ParquetFile) -> bool:
    """Whether the file's frames are in (episode, frame) order, reading only those two columns."""
    names = pf.schema_arrow.names
    if F.EPISODE not in names or F.FRAME not in names:
        return True  # the validator refuses the file at its first batch
    last: tuple[int, int] | None = None
    try:
        for b in pf.iter_batches(batch_size=BATCH_FRAMES * 4, columns=[F.EPISODE, F.FRAME]):
            if b.num_rows == 0:
                continue
            ep = pc.cast(b.column(0), pa.int64()).to_numpy()
            fr = pc.cast(b.column(1), pa.int64()).to_numpy()
            if last is not None:
                ep, fr = np.concatenate(([last[0]], ep)), np.concatenate(([last[1]], fr))
            if ((ep[1:] < ep[:-1]) | ((ep[1:] == ep[:-1]) & (fr[1:] < fr[:-1]))).any():
                return False
            last = (int(ep[-1]), int(fr[-1]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return False  # nulls or text: the whole-file path reports them precisely
    return True


@dataclass
class InputStream:
    """Validated frames of several inputs, batch by batch, all in ``schema``."""

    inputs: list[_Input]
    emb: Embodiment
    schema: pa.Schema
    allow_out_of_limits: bool = False
    frames: int = 0
    out_of_limits: int = 0
    episodes: dict[int, str] = field(default_factory=dict)  # episode -> the input it came from
    fingerprints: EpisodeFingerprints = field(default_factory=EpisodeFingerprints)

    @property
    def total_frames(self) -> int:
        """Frames in all inputs, from their footers (what ``frames`` reaches at the end)."""
        return sum(i.frames for i in self.inputs)

    def batches(self) -> Iterator[pa.Table]:
        for inp in self.inputs:
            source = str(inp.path)
            v = FrameValidator(self.emb, source, self.allow_out_of_limits)
            for batch in self._checked(inp, v):
                if batch.num_rows == 0:
                    continue
                self._claim_episodes(batch, source)
                self.fingerprints.feed(batch)
                self.frames += batch.num_rows
                yield self._conform(batch, source)
            v.finish()
            self.out_of_limits += v.out_of_limits

    def _checked(self, inp: _Input, v: FrameValidator) -> Iterator[pa.Table]:
        if inp.parquet is not None and _in_order(inp.parquet):
            for b in inp.parquet.iter_batches(batch_size=BATCH_FRAMES):
                yield v.feed(b)
            return
        table = inp.table if inp.table is not None else pq.read_table(inp.path)
        checked = validate_frames(table, self.emb, str(inp.path), self.allow_out_of_limits)
        v.frames, v.out_of_limits = checked.table.num_rows, checked.out_of_limits
        for start in range(0, checked.table.num_rows, BATCH_FRAMES):
            yield checked.table.slice(start, BATCH_FRAMES)

    def _claim_episodes(self, batch: pa.Table, source: str) -> None:
        for ep in np.unique(batch.column(F.EPISODE).to_numpy()).tolist():
            other = self.episodes.setdefault(ep, source)
            if other != source:
                raise TelemetryError(f"{source}: episode {ep} also appears in {other}; episode indices "
                                     "must be unique across the files of one ingest")

    def _conform(self, batch: pa.Table, source: str) -> pa.Table:
        n = batch.num_rows
        try:
            cols = [batch.column(f.name).cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
                    for f in self.schema]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise TelemetryError(f"{source}: columns do not match the other inputs: {e}") from None
        return pa.Table.from_arrays(cols, schema=self.schema)


def open_inputs(paths: Sequence[Path], emb: Embodiment, allow_out_of_limits: bool = False) -> InputStream:
    """Open every input (footers only, LeRobot folders whole) and agree on one schema."""
    inputs = [_open(Path(p), emb) for p in paths]
    try:
        schema = pa.unify_schemas([_canonical(i.schema) for i in inputs], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise TelemetryError(f"inputs have incompatible columns: {e}") from None
    return InputStream(inputs, emb, schema, allow_out_of_limits)
