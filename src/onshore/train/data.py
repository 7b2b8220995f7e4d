"""Training windows streamed from resident shards, mixed across datasets and embodiments.

A **window** at frame t of an episode is: the last K states (earlier frames repeat the
episode's first state), the next H actions (steps past the episode's end repeat its last action
and are masked out of the loss), the next state (masked on the last frame), and the action
applied before each of the K frames (flagged unknown before the episode's first frame; only
models with ``action_feedback`` read them).

Memory stays bounded by the largest shard, whatever the dataset sizes: each dataset is a
:class:`Stream` that holds one decrypted shard at a time, walks its shards in a shuffled order
per epoch and its windows in a shuffled order per shard, and is checkpointable as three numbers
(epoch, shard position, offset). The :class:`Mixer` fills every batch with a fixed number of
windows from each dataset (its share of the batch by weight, at least one), so the composition
of step ``n``'s batch depends only on the seed and ``n``. In a job of W processes every process
walks the same global batch and keeps the windows ``rank, rank + W, ...`` of each dataset's share.

Episodes are held out for a validation loss by a hash of (dataset, episode), never by position,
so the split is the same whichever shard an episode sits in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onshore.errors import ValidationError
from onshore.model.network import EmbodimentSpec, ModelConfig, state_groups
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Embodiment


class ShardSource(Protocol):
    """A dataset readable shard by shard (``onshore.workspace.datasets.ResidentDataset``)."""

    name: str
    embodiment: str
    shards: list[dict[str, Any]]  # each with "frames"

    def iter_shard(self, i: int) -> Iterator[pa.RecordBatch]: ...


@dataclass
class Frames:
    """One shard's frames, sorted by episode then frame, with episode bounds per row."""

    state: np.ndarray  # [N, S] float32, machine units
    action: np.ndarray  # [N, A] float32, machine units
    task: np.ndarray  # [N] int64, index into the job's task list (-1: unknown to it)
    tasks: list[str]  # this shard's task strings, by local index
    task_local: np.ndarray  # [N] int64, index into ``tasks``
    ep_start: np.ndarray  # [N] first row of the row's episode
    ep_end: np.ndarray  # [N] one past its last row
    held: np.ndarray  # [N] bool: the row's episode is held out


def _values(col: pa.Array, width: int | None = None) -> np.ndarray:
    if width is None:
        return col.to_numpy(zero_copy_only=False)
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def held_out_episodes(dataset: str, episodes: np.ndarray, fraction: float) -> np.ndarray:
    """Which episodes are held out: SHA-256 of "DATASET/EPISODE" below ``fraction`` of the range."""
    if fraction <= 0:
        return np.zeros(len(episodes), dtype=bool)
    cut = int(fraction * 2**32)
    return np.array([int.from_bytes(hashlib.sha256(f"{dataset}/{int(e)}".encode()).digest()[:4], "big") < cut
                     for e in episodes], dtype=bool)


def read_frames(batches: Iterable[pa.RecordBatch], rows: int, dataset: str, state_dim: int, action_dim: int,
                task_ids: dict[str, int], holdout: float) -> Frames:
    """A shard's frames as arrays (see :class:`Frames`), filled batch by batch.

    Memory: the arrays themselves plus one decrypted batch; rows are reordered (a copy) only if
    the shard is not already sorted by episode and frame.
    """
    ep = np.empty(rows, np.int64)
    frame = np.empty(rows, np.int64)
    state = np.empty((rows, state_dim), np.float32)
    action = np.empty((rows, action_dim), np.float32)
    local = np.zeros(rows, np.int64)
    tasks: dict[str, int] = {}
    at = 0
    for b in batches:
        n = b.num_rows
        if at + n > rows:
            raise ValidationError(f"dataset {dataset}: a shard holds more frames than the catalog says ({rows})")
        ep[at:at + n] = _values(b.column(F.EPISODE))
        frame[at:at + n] = _values(b.column(F.FRAME))
        state[at:at + n] = _values(b.column(F.STATE), state_dim)
        action[at:at + n] = _values(b.column(F.ACTION), action_dim)
        if F.TASK in b.schema.names:
            codes = pc.fill_null(b.column(F.TASK), "").dictionary_encode()
            remap = np.array([tasks.setdefault(t, len(tasks)) for t in codes.dictionary.to_pylist()], np.int64)
            if len(remap):
                local[at:at + n] = remap[_values(codes.indices).astype(np.int64)]
        else:
            tasks.setdefault("", len(tasks))
        at += n
    if at != rows:
        raise ValidationError(f"dataset {dataset}: a shard holds {at} frames, the catalog says {rows}")
    pa.default_memory_pool().release_unused()
    key_sorted = rows < 2 or bool(np.all((np.diff(ep) > 0) | ((np.diff(ep) == 0) & (np.diff(frame) > 0))))
    if not key_sorted:
        order = np.lexsort((frame, ep))
        ep, state, action, local = ep[order], state[order], action[order], local[order]
    task_list = sorted(tasks, key=tasks.__getitem__) or [""]
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]]) if rows else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], rows]
    lengths = ends - starts
    held_ep = held_out_episodes(dataset, ep[starts], holdout)
    lookup = np.array([task_ids.get(t, -1) for t in task_list], dtype=np.int64)
    return Frames(state, action, lookup[local], task_list, local, np.repeat(starts, lengths),
                  np.repeat(ends, lengths), np.repeat(held_ep, lengths))


def windows(fr: Frames, rows: np.ndarray, history: int, chunk: int) -> dict[str, np.ndarray]:
    """Windows starting at ``rows``, in machine units (see the module docstring)."""
    start, end = fr.ep_start[rows][:, None], fr.ep_end[rows][:, None]
    hist = np.maximum(rows[:, None] - np.arange(history - 1, -1, -1)[None], start)
    steps = rows[:, None] + np.arange(chunk)[None]
    mask = steps < end
    nxt = rows + 1
    next_mask = nxt < end[:, 0]
    # The action applied just before each history frame; none before the episode's first frame
    # (padded history frames repeat the first frame, so they have none either).
    before = rows[:, None] - np.arange(history - 1, -1, -1)[None] - 1
    known = before >= start
    return {"state": fr.state[hist], "action": fr.action[np.minimum(steps, end - 1)],
            "action_mask": mask.astype(np.float32), "next_state": fr.state[np.minimum(nxt, end[:, 0] - 1)],
            "next_mask": next_mask.astype(np.float32), "task": fr.task[rows],
            "prev_action": fr.action[np.maximum(before, start)], "prev_known": known.astype(np.float32)}


def normalise(raw: dict[str, np.ndarray], spec: EmbodimentSpec, task_vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Machine units to model units: states normalised, actions in [-1, 1], tasks as vectors."""
    known = raw["prev_known"]
    return {"state": spec.normalise_state(raw["state"]), "action": spec.scale_action(raw["action"]),
            "action_mask": raw["action_mask"], "next_state": spec.normalise_state(raw["next_state"]),
            "next_mask": raw["next_mask"], "task": task_vectors[raw["task"]],
            "prev_action": spec.scale_action(raw["prev_action"]) * known[..., None], "prev_known": known}


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---- the scan: normalisation statistics, tasks, held-out windows ----------------------------------

@dataclass
class Scan:
    """What one pass over the data gives: embodiment specs, the task list, held-out windows."""

    specs: dict[str, EmbodimentSpec]
    tasks: list[str]
    train_windows: dict[str, int]  # per dataset
    heldout: dict[str, dict[str, np.ndarray]]  # per embodiment, machine units


def _spec(emb: Embodiment, cfg: ModelConfig, s1: np.ndarray, s2: np.ndarray, n: int, amin: np.ndarray,
          amax: np.ndarray) -> EmbodimentSpec:
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    span = np.array([c.high - c.low for c in emb.state])
    # A constant channel would divide by ~0: floor the scale at a thousandth of its range.
    std = np.maximum(std, np.maximum(1e-3 * span, 1e-6))
    lo_lim = np.array([c.low for c in emb.action])
    hi_lim = np.array([c.high for c in emb.action])
    # Actions scale to [-1, 1] over the range seen in training, 5 % wider, inside the limits.
    margin = 0.05 * (amax - amin)
    lo = np.maximum(amin - margin, lo_lim)
    hi = np.minimum(amax + margin, hi_lim)
    flat = hi - lo < 1e-6 * (hi_lim - lo_lim)
    lo, hi = np.where(flat, lo_lim, lo), np.where(flat, hi_lim, hi)
    return EmbodimentSpec(emb.name, emb.state_dim, emb.action_dim, state_groups(emb, cfg.max_group),
                          tuple(mean.tolist()), tuple(std.tolist()), tuple(lo.tolist()), tuple(hi.tolist()))


def per_source(holdout: float | Sequence[float], n: int) -> list[float]:
    """One held-out fraction per source: a single number applies to all of them."""
    if isinstance(holdout, int | float):
        return [float(holdout)] * n
    if len(holdout) != n:
        raise ValidationError(f"{len(holdout)} held-out fractions for {n} datasets")
    return [float(h) for h in holdout]


def scan(sources: Sequence[ShardSource], embodiments: dict[str, Embodiment], cfg: ModelConfig,
         holdout: float | Sequence[float] = 0.0, seed: int = 0, heldout_cap: int = 256,
         keep: dict[str, EmbodimentSpec] | None = None) -> Scan:
    """One pass over every shard: statistics per embodiment (unless ``keep`` has its spec already,
    as when fine-tuning), the sorted task list, window counts, and up to ``heldout_cap`` held-out
    windows per dataset (``holdout``: one fraction, or one per source). Refuses a dataset with no
    training window."""
    keep = keep or {}
    fractions = per_source(holdout, len(sources))
    acc: dict[str, list[Any]] = {}
    tasks: set[str] = set()
    counts: dict[str, int] = {}
    held_raw: dict[str, list[tuple[str, dict[str, np.ndarray]]]] = {}
    for d_i, src in enumerate(sources):
        emb = embodiments[src.embodiment]
        counts[src.name] = 0
        left = heldout_cap
        for s_i in range(len(src.shards)):
            fr = read_frames(src.iter_shard(s_i), int(src.shards[s_i]["frames"]), src.name, emb.state_dim,
                             emb.action_dim, {}, fractions[d_i])
            tasks.update(fr.tasks)
            train = ~fr.held
            counts[src.name] += int(train.sum())
            if src.embodiment not in keep and train.any():
                a = acc.setdefault(src.embodiment, [0.0, 0.0, 0, None, None])
                rows = np.flatnonzero(train)
                for c in range(0, len(rows), 65536):  # float64 sums, a slice at a time (bounded memory)
                    st = fr.state[rows[c:c + 65536]].astype(np.float64)
                    a[0] = a[0] + st.sum(0)
                    a[1] = a[1] + (st * st).sum(0)
                ac = fr.action[rows]
                a[2] += len(rows)
                a[3] = ac.min(0) if a[3] is None else np.minimum(a[3], ac.min(0))
                a[4] = ac.max(0) if a[4] is None else np.maximum(a[4], ac.max(0))
            held_rows = np.flatnonzero(fr.held)
            if left > 0 and len(held_rows):
                rng = np.random.default_rng([seed, d_i, s_i, 0x4E1D])
                pick = np.sort(rng.permutation(held_rows)[:left])
                w = windows(fr, pick, cfg.history, cfg.chunk)
                w["task_text"] = np.array(fr.tasks, dtype=object)[fr.task_local[pick]]
                held_raw.setdefault(src.embodiment, []).append((src.name, w))
                left -= len(pick)
            del fr
        if counts[src.name] == 0:
            raise ValidationError(f"dataset {src.name!r} has no training frames (all held out or empty); "
                                  "lower --holdout or add episodes")
    specs = dict(keep)
    for name, (s1, s2, n, amin, amax) in acc.items():
        specs[name] = _spec(embodiments[name], cfg, s1, s2, n, amin, amax)
    task_list = sorted(tasks)
    ids = {t: i for i, t in enumerate(task_list)}
    heldout = {}
    for emb_name, parts in held_raw.items():
        merged = concat([w for _, w in parts])
        merged["task"] = np.array([ids[t] for t in merged.pop("task_text")], dtype=np.int64)
        heldout[emb_name] = merged
    return Scan(specs, task_list, counts, heldout)


# ---- streaming and mixing ---------------------------------------------------------------------------

def split_batch(batch_size: int, weights: Sequence[float]) -> list[int]:
    """Windows per dataset in a batch: proportional to weight (largest remainder), at least one each."""
    n = len(weights)
    if batch_size < n:
        raise ValidationError(f"--batch-size {batch_size} is smaller than the number of datasets ({n})")
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any() or not np.isfinite(w).all():
        raise ValidationError("dataset weights must be positive numbers")
    extra = batch_size - n  # one each first, then the rest by weight
    raw = extra * w / w.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: extra - counts.sum()]:
        counts[i] += 1
    return (counts + 1).tolist()


class Stream:
    """One dataset's training windows, epoch by epoch, one decrypted shard at a time."""

    def __init__(self, src: ShardSource, index: int, emb: Embodiment, task_ids: dict[str, int], seed: int,
                 holdout: float) -> None:
        self.src, self.index, self.emb, self.task_ids = src, index, emb, task_ids
        self.seed, self.holdout = seed, holdout
        self.epoch = self.pos = self.offset = 0
        self._frames: Frames | None = None
        self._perm: np.ndarray | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.pos, self.offset = int(state["epoch"]), int(state["pos"]), int(state["offset"])
        self._frames = self._perm = None

    def _load(self) -> None:
        order = np.random.default_rng([self.seed, self.index, self.epoch]).permutation(len(self.src.shards))
        shard = int(order[self.pos])
        fr = read_frames(self.src.iter_shard(shard), int(self.src.shards[shard]["frames"]), self.src.name,
                         self.emb.state_dim, self.emb.action_dim, self.task_ids, self.holdout)
        rng = np.random.default_rng([self.seed, self.index, self.epoch, shard])
        self._frames, self._perm = fr, rng.permutation(np.flatnonzero(~fr.held))

    def take(self, n: int) -> list[tuple[Frames, np.ndarray]]:
        """The next ``n`` windows' rows, as (frames, rows) pieces (a piece per shard touched)."""
        out = []
        while n > 0:
            if self._frames is None:
                self._load()
            assert self._perm is not None and self._frames is not None
            avail = len(self._perm) - self.offset
            if avail <= 0:
                self.pos, self.offset = self.pos + 1, 0
                if self.pos >= len(self.src.shards):
                    self.epoch, self.pos = self.epoch + 1, 0
                self._frames = self._perm = None  # free the shard before reading the next
                continue
            k = min(n, avail)
            out.append((self._frames, self._perm[self.offset:self.offset + k]))
            self.offset += k
            n -= k
        return out


class Mixer:
    """Batches across datasets: ``counts[d]`` windows of dataset d per step; this rank's share."""

    def __init__(self, sources: Sequence[ShardSource], embodiments: dict[str, Embodiment], weights: Sequence[float],
                 batch_size: int, scan_result: Scan, task_vectors: np.ndarray, cfg: ModelConfig, seed: int,
                 holdout: float | Sequence[float], rank: int = 0, world: int = 1) -> None:
        ids = {t: i for i, t in enumerate(scan_result.tasks)}
        fractions = per_source(holdout, len(sources))
        self.streams = [Stream(s, i, embodiments[s.embodiment], ids, seed, fractions[i])
                        for i, s in enumerate(sources)]
        self.counts = split_batch(batch_size, weights)
        self.batch_size = batch_size
        self.specs, self.task_vectors, self.cfg = scan_result.specs, task_vectors, cfg
        self.rank, self.world = rank, world

    def state(self) -> list[dict[str, int]]:
        return [s.state() for s in self.streams]

    def restore(self, state: list[dict[str, int]]) -> None:
        for s, st in zip(self.streams, state, strict=True):
            s.restore(st)

    def next_batch(self) -> dict[str, dict[str, np.ndarray]]:
        """This rank's windows of the next global batch, grouped by embodiment, in model units."""
        groups: dict[str, list[dict[str, np.ndarray]]] = {}
        for stream, count in zip(self.streams, self.counts, strict=True):
            mine = np.arange(count)[self.rank::self.world]  # positions of this rank in the dataset's share
            base = 0
            for fr, rows in stream.take(count):
                sel = mine[(mine >= base) & (mine < base + len(rows))] - base
                base += len(rows)
                if len(sel):
                    raw = windows(fr, rows[sel], self.cfg.history, self.cfg.chunk)
                    spec = self.specs[stream.src.embodiment]
                    groups.setdefault(stream.src.embodiment, []).append(normalise(raw, spec, self.task_vectors))
        return {e: concat(parts) for e, parts in groups.items()}
