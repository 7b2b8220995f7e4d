"""Validation of telemetry frames against an embodiment, before anything is stored.

Every check is vectorised over a batch; the first offending frame is reported with its file,
episode, frame and channel so that a data steward can find it. Nothing is written here.

``FrameValidator`` checks a stream of batches in (episode, frame) order, carrying the last
frame across batch boundaries, so a file of any size is validated in constant memory;
``validate_frames`` checks a whole table in any order (it sorts first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onshore.errors import ValidationError
from onshore.i18n import N_, Message
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Channel, Embodiment


class TelemetryError(ValidationError):
    """Bad telemetry; the message names the file, episode, frame and channel."""


ALLOW_FLAG = "--allow-out-of-limits"


def _where(source: str, table: pa.Table, row: int) -> Message:
    ep = table.column(F.EPISODE)[row].as_py()
    fr = table.column(F.FRAME)[row].as_py()
    return Message(N_("{source}: episode {episode}, frame {frame}"), {"source": source, "episode": ep, "frame": fr})


def _is_text(t: pa.DataType) -> bool:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
        or pa.types.is_large_binary(t)


def _cast(table: pa.Table, name: str, source: str) -> pa.Array:
    col = table.column(name)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise TelemetryError(Message(N_("{source}: column {name!r} is empty (null) at row {row}"),
                                     {"source": source, "name": name, "row": row}))
    target = F.TYPES[name]
    if _is_text(col.type) and not _is_text(target):
        # Arrow would parse "0.1" into 0.1; numbers written as text are a bug in the writer.
        raise TelemetryError(Message(N_("{source}: column {name!r} holds text ({type}), expected numbers ({target}); "
                                        "write it as numbers"),
                                     {"source": source, "name": name, "type": col.type, "target": target}))
    try:
        return pc.cast(col, target, safe=True).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TelemetryError(f"{source}: column {name!r} has type {col.type}, expected {target}: {e}") from None


def _vectors(table: pa.Table, name: str, channels: tuple[Channel, ...], emb: Embodiment, source: str
             ) -> np.ndarray:
    """The column as a (frames, channels) float32 array, after width, null and finiteness checks."""
    arr = table.column(name).combine_chunks()
    width = len(channels)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        row = int(bad[0])
        raise TelemetryError(Message(
            N_("{where}: {name!r} has {count} values but embodiment {embodiment!r} has {width} channels"),
            {"where": _where(source, table, row), "name": name, "count": lengths[row], "embodiment": emb.name,
             "width": width}))
    if arr.values.null_count:
        flat_bad = int(np.flatnonzero(arr.values.is_null().to_numpy(zero_copy_only=False))[0])
        row, ch = divmod(flat_bad, width)
        raise TelemetryError(Message(N_("{where}: {name!r} channel {channel!r} is null"),
                                     {"where": _where(source, table, row), "name": name,
                                      "channel": channels[ch].name}))
    values = arr.flatten().to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    if not finite.all():
        flat_bad = int(np.flatnonzero(~finite)[0])
        row, ch = divmod(flat_bad, width)
        raise TelemetryError(Message(
            N_("{where}: {name!r} channel {channel!r} is {value} (NaN and Inf are refused; drop or repair the frame)"),
            {"where": _where(source, table, row), "name": name, "channel": channels[ch].name,
             "value": values[flat_bad]}))
    return values.reshape(-1, width)


def _outside(values: np.ndarray, channels: tuple[Channel, ...]) -> np.ndarray:
    """Boolean mask of values outside their channel's [low, high] (compared in float32, as stored)."""
    low = np.array([c.low for c in channels], dtype=np.float32)
    high = np.array([c.high for c in channels], dtype=np.float32)
    return (values < low) | (values > high)


def _limit_message(table: pa.Table, name: str, values: np.ndarray, mask: np.ndarray,
                   channels: tuple[Channel, ...], source: str) -> Message:
    row, ch = (int(i) for i in np.argwhere(mask)[0])
    c = channels[ch]
    unit = f" {c.unit}" if c.unit else ""
    return Message(N_("{where}: {name!r} channel {channel!r} is {value:g}{unit}, outside its limits "
                      "{low:g}..{high:g}{unit} ({count} value(s) outside in this batch)"),
                   {"where": _where(source, table, row), "name": name, "channel": c.name,
                    "value": float(values[row, ch]), "unit": unit, "low": c.low, "high": c.high,
                    "count": int(mask.sum())})


@dataclass
class FrameValidator:
    """Validates batches of one input, in (episode, frame) order, against ``emb``.

    Refuses: a missing required column, nulls, text where numbers belong, a wrong type, a
    state or action vector of the wrong width, NaN or Inf in state, action, timestamp or
    reward, a negative timestamp or index, a repeated (episode, frame), time that does not
    increase within an episode, an action outside its channel's limits (always), and a state
    value outside its channel's limits unless ``allow_out_of_limits`` (then they are counted in
    ``out_of_limits``). ``feed`` returns each batch with canonical column types.
    """

    emb: Embodiment
    source: str
    allow_out_of_limits: bool = False
    frames: int = 0
    out_of_limits: int = 0

    def __post_init__(self) -> None:
        self.episodes: set[int] = set()
        self._last: tuple[int, int, float] | None = None

    def feed(self, batch: pa.Table | pa.RecordBatch, sort: bool = False) -> pa.Table:
        """Check ``batch`` (which must follow the previous one in order unless it is the only one)."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        source, emb = self.source, self.emb
        missing = [c for c in F.REQUIRED if c not in table.column_names]
        if missing:
            raise TelemetryError(Message(N_("{source}: missing column(s) {missing}; frame files need {required}"),
                                         {"source": source, "missing": missing, "required": list(F.REQUIRED)}))
        if table.num_rows == 0:
            return table
        cols = {name: _cast(table, name, source) if name in F.TYPES else table.column(name).combine_chunks()
                for name in table.column_names}
        table = pa.table(cols)
        if sort:
            table = table.sort_by([(F.EPISODE, "ascending"), (F.FRAME, "ascending")])

        state = _vectors(table, F.STATE, emb.state, emb, source)
        action = _vectors(table, F.ACTION, emb.action, emb, source)

        ep = table.column(F.EPISODE).to_numpy()
        fr = table.column(F.FRAME).to_numpy()
        ts = table.column(F.TIMESTAMP).to_numpy()
        for name, values in ((F.TIMESTAMP, ts),) + (
            ((F.REWARD, table.column(F.REWARD).to_numpy(zero_copy_only=False)),) if F.REWARD in cols else ()
        ):
            finite = np.isfinite(values)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise TelemetryError(Message(N_("{where}: {name!r} is {value} (must be finite)"),
                                             {"where": _where(source, table, row), "name": name,
                                              "value": values[row]}))
        if (ep < 0).any() or (fr < 0).any():
            row = int(np.flatnonzero((ep < 0) | (fr < 0))[0])
            raise TelemetryError(Message(N_("{where}: episode and frame indices must not be negative"),
                                         {"where": _where(source, table, row)}))
        if (ts < 0).any():
            row = int(np.flatnonzero(ts < 0)[0])
            raise TelemetryError(Message(N_("{where}: timestamp {timestamp} is negative; timestamps are seconds "
                                            "since the episode began"),
                                         {"where": _where(source, table, row), "timestamp": ts[row]}))

        # Order, including the step from the previous batch's last frame to this one's first.
        if self._last is not None:
            ep = np.concatenate(([self._last[0]], ep))
            fr = np.concatenate(([self._last[1]], fr))
            ts = np.concatenate(([self._last[2]], ts))
        shift = 0 if self._last is None else 1
        back_ep = np.flatnonzero((ep[1:] < ep[:-1]) | ((ep[1:] == ep[:-1]) & (fr[1:] < fr[:-1])))
        if back_ep.size:
            raise TelemetryError(Message(N_("{where}: frames are not in (episode, frame) order"),
                                         {"where": _where(source, table, int(back_ep[0]) + 1 - shift)}))
        same_ep = ep[1:] == ep[:-1]
        dup = np.flatnonzero(same_ep & (fr[1:] == fr[:-1]))
        if dup.size:
            raise TelemetryError(Message(N_("{where}: this frame appears twice"),
                                         {"where": _where(source, table, int(dup[0]) + 1 - shift)}))
        back = np.flatnonzero(same_ep & (ts[1:] <= ts[:-1]))
        if back.size:
            i = int(back[0]) + 1
            raise TelemetryError(Message(
                N_("{where}: timestamp {timestamp} does not increase (previous frame has {previous}); time must "
                   "increase within an episode"),
                {"where": _where(source, table, i - shift), "timestamp": ts[i], "previous": ts[i - 1]}))

        bad_action = _outside(action, emb.action)
        if bad_action.any():
            raise TelemetryError(Message(N_("{limits}; actions outside their limits are always refused"),
                                         {"limits": _limit_message(table, F.ACTION, action, bad_action, emb.action,
                                                                   source)}))
        bad_state = _outside(state, emb.state)
        if bad_state.any():
            if not self.allow_out_of_limits:
                raise TelemetryError(Message(
                    N_("{limits}; repair the data or the embodiment's limits, or ingest with {flag} to keep it "
                       "(the count is recorded in the ledger)"),
                    {"limits": _limit_message(table, F.STATE, state, bad_state, emb.state, source),
                     "flag": ALLOW_FLAG}))
            self.out_of_limits += int(bad_state.sum())

        self._last = (int(ep[-1]), int(fr[-1]), float(ts[-1]))
        self.episodes.update(np.unique(table.column(F.EPISODE).to_numpy()).tolist())
        self.frames += table.num_rows
        return table

    def finish(self) -> None:
        """Refuse an input that held no frames at all."""
        if self.frames == 0:
            raise TelemetryError(Message(N_("{source}: no frames"), {"source": self.source}))


@dataclass(frozen=True)
class Validated:
    """A validated table (canonical types, sorted by episode and frame) and its out-of-limit count."""

    table: pa.Table
    out_of_limits: int


def validate_frames(table: pa.Table, emb: Embodiment, source: str, allow_out_of_limits: bool = False
                    ) -> Validated:
    """Check a whole ``table`` against the frame schema and ``emb`` (see ``FrameValidator``).

    Rows come back sorted by episode and frame.
    """
    v = FrameValidator(emb, source, allow_out_of_limits)
    checked = v.feed(table, sort=True)
    v.finish()
    return Validated(checked, v.out_of_limits)
