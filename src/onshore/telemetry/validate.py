"""Validation of telemetry frames against an embodiment, before anything is stored.

Every check is vectorised over the whole table; the first offending frame is reported with its
file, episode, frame and channel so that a data steward can find it. Nothing is written here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onshore.errors import ValidationError
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Embodiment


class TelemetryError(ValidationError):
    """Bad telemetry; the message names the file, episode, frame and channel."""


def _where(source: str, table: pa.Table, row: int) -> str:
    ep = table.column(F.EPISODE)[row].as_py()
    fr = table.column(F.FRAME)[row].as_py()
    return f"{source}: episode {ep}, frame {fr}"


def _cast(table: pa.Table, name: str, source: str) -> pa.Array:
    col = table.column(name)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise TelemetryError(f"{source}: column {name!r} is empty (null) at row {row}")
    target = F.TYPES[name]
    try:
        return pc.cast(col, target, safe=True).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TelemetryError(f"{source}: column {name!r} has type {col.type}, expected {target}: {e}") from None


def _check_vectors(table: pa.Table, name: str, arr: pa.ListArray, width: int, channels: list[str],
                   emb: Embodiment, source: str) -> None:
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        row = int(bad[0])
        raise TelemetryError(
            f"{_where(source, table, row)}: {name!r} has {lengths[row]} values but embodiment "
            f"{emb.name!r} has {width} channels"
        )
    if arr.values.null_count:
        flat_bad = int(np.flatnonzero(arr.values.is_null().to_numpy(zero_copy_only=False))[0])
        row, ch = divmod(flat_bad, width)
        raise TelemetryError(f"{_where(source, table, row)}: {name!r} channel {channels[ch]!r} is null")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    if not finite.all():
        flat_bad = int(np.flatnonzero(~finite)[0])
        row, ch = divmod(flat_bad, width)
        raise TelemetryError(
            f"{_where(source, table, row)}: {name!r} channel {channels[ch]!r} is {values[flat_bad]} "
            "(NaN and Inf are refused; drop or repair the frame)"
        )


def validate_frames(table: pa.Table, emb: Embodiment, source: str) -> pa.Table:
    """Check ``table`` against the frame schema and ``emb``; return it with canonical types.

    Refuses: a missing required column, nulls, a wrong type, a state or action vector of the wrong
    width, NaN or Inf anywhere in state, action, timestamp or reward, a repeated (episode, frame),
    and time that does not increase within an episode (in frame order). Rows come back sorted by
    episode and frame.
    """
    missing = [c for c in F.REQUIRED if c not in table.column_names]
    if missing:
        raise TelemetryError(
            f"{source}: missing column(s) {missing}; frame files need {list(F.REQUIRED)}"
        )
    if table.num_rows == 0:
        raise TelemetryError(f"{source}: no frames")
    cols = {}
    for name in table.column_names:
        cols[name] = _cast(table, name, source) if name in F.TYPES else table.column(name).combine_chunks()
    table = pa.table(cols).sort_by([(F.EPISODE, "ascending"), (F.FRAME, "ascending")])

    _check_vectors(table, F.STATE, table.column(F.STATE).combine_chunks(), emb.state_dim,
                   [c.name for c in emb.state], emb, source)
    _check_vectors(table, F.ACTION, table.column(F.ACTION).combine_chunks(), emb.action_dim,
                   [c.name for c in emb.action], emb, source)

    ep = table.column(F.EPISODE).to_numpy()
    fr = table.column(F.FRAME).to_numpy()
    ts = table.column(F.TIMESTAMP).to_numpy()
    for name, values in ((F.TIMESTAMP, ts),) + (
        ((F.REWARD, table.column(F.REWARD).to_numpy(zero_copy_only=False)),) if F.REWARD in cols else ()
    ):
        finite = np.isfinite(values)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise TelemetryError(f"{_where(source, table, row)}: {name!r} is {values[row]} (must be finite)")
    if (ep < 0).any() or (fr < 0).any():
        row = int(np.flatnonzero((ep < 0) | (fr < 0))[0])
        raise TelemetryError(f"{_where(source, table, row)}: episode and frame indices must not be negative")
    same_ep = ep[1:] == ep[:-1]
    dup = np.flatnonzero(same_ep & (fr[1:] == fr[:-1]))
    if dup.size:
        raise TelemetryError(f"{_where(source, table, int(dup[0]) + 1)}: this frame appears twice")
    back = np.flatnonzero(same_ep & (ts[1:] <= ts[:-1]))
    if back.size:
        row = int(back[0]) + 1
        raise TelemetryError(
            f"{_where(source, table, row)}: timestamp {ts[row]} does not increase "
            f"(previous frame has {ts[row - 1]}); time must increase within an episode"
        )
    return table
