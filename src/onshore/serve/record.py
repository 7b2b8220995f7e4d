"""Runs come back as data: what a served machine did, recorded as episodes and ingested.

Each session of the policy server is one episode per ``reset``: for every ``act`` the state that
arrived, the command sent back (after the envelope), the interventions as a bit set (see
:func:`onshore.serve.envelope.bits`), and the deadline misses and bridge interventions the
client reported. Finished episodes are spooled as Parquet under the serving site's folder
(``runs/.spool/RUN``), so memory does not grow with a long run; when the server stops they are
ingested as a resident dataset at the serving site under the usage policy the member names
(``--record-policy``), one dataset per embodiment, and the spool is deleted. States are
recorded as the machine reported them (values outside the channel limits are kept and counted
in the ingest entry); commands are always inside the limits, since the envelope made them.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.telemetry import frames as F

INTERVENTIONS = "envelope.interventions"
DEADLINE_MISSES = "bridge.deadline_misses"
BRIDGE_INTERVENTIONS = "bridge.interventions"
EXTRA = {INTERVENTIONS: pa.int64(), DEADLINE_MISSES: pa.int64(), BRIDGE_INTERVENTIONS: pa.int64()}


@dataclass(frozen=True)
class RecordOptions:
    """Record the run as dataset(s) owned by ``member`` under the policy file ``policy``.

    ``dataset`` names it (default ``MODEL-run-RUNID``); with several embodiments served, each
    gets ``-EMBODIMENT`` appended."""

    policy: Path
    member: str
    dataset: str | None = None


@dataclass
class _Episode:
    embodiment: str
    task: str
    t0: float
    ts: list[float] = field(default_factory=list)
    state: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    interventions: list[int] = field(default_factory=list)
    misses: list[int] = field(default_factory=list)
    bridge: list[int] = field(default_factory=list)


class Recorder:
    """Collects episodes of one run; thread-safe (sessions finish from the server's loop)."""

    def __init__(self, spool: Path) -> None:
        self.run_id = uuid.uuid4().hex[:12]
        self.spool = Path(spool) / self.run_id
        self._lock = threading.Lock()
        self._next = 0
        self.files: dict[str, list[Path]] = {}
        self.frames = 0

    def begin(self, embodiment: str, task: str, now: float) -> _Episode:
        return _Episode(embodiment, task, now)

    @staticmethod
    def frame(ep: _Episode, now: float, state: np.ndarray, action: np.ndarray, interventions: int,
              misses: int, bridge: int) -> None:
        t = now - ep.t0
        if ep.ts and t <= ep.ts[-1]:
            t = ep.ts[-1] + 1e-6  # time must increase within an episode, even within a clock tick
        ep.ts.append(t)
        ep.state.append(np.asarray(state, dtype=np.float32))
        ep.action.append(np.asarray(action, dtype=np.float32))
        ep.interventions.append(interventions)
        ep.misses.append(misses)
        ep.bridge.append(bridge)

    def finish(self, ep: _Episode) -> None:
        """Spool a finished episode (nothing for an episode without frames)."""
        n = len(ep.ts)
        if not n:
            return
        with self._lock:
            index = self._next
            self._next += 1
            self.frames += n
        state, action = np.stack(ep.state), np.stack(ep.action)
        table = pa.table({
            F.EPISODE: np.full(n, index, dtype=np.int64),
            F.FRAME: np.arange(n, dtype=np.int64),
            F.TIMESTAMP: np.asarray(ep.ts, dtype=np.float64),
            F.STATE: pa.FixedSizeListArray.from_arrays(state.ravel(), state.shape[1]).cast(pa.list_(pa.float32())),
            F.ACTION: pa.FixedSizeListArray.from_arrays(action.ravel(), action.shape[1]).cast(
                pa.list_(pa.float32())),
            F.TASK: pa.array([ep.task] * n, pa.string()),
            F.DONE: np.arange(n) == n - 1,
            INTERVENTIONS: np.asarray(ep.interventions, dtype=np.int64),
            DEADLINE_MISSES: np.asarray(ep.misses, dtype=np.int64),
            BRIDGE_INTERVENTIONS: np.asarray(ep.bridge, dtype=np.int64),
        })
        folder = self.spool / ep.embodiment
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"episode-{index:06d}.parquet"
        pq.write_table(table, path)
        with self._lock:
            self.files.setdefault(ep.embodiment, []).append(path)

    def ingest(self, ws: Any, site: str, model: str, options: RecordOptions) -> list[dict[str, Any]]:
        """Ingest the spooled episodes at ``site``: one dataset per embodiment; returns
        [{dataset, embodiment, episodes, frames, ledger_index}] (empty when nothing was recorded).
        The spool is removed once every dataset is in."""
        from onshore.workspace import datasets

        out = []
        base = options.dataset or f"{model}-run-{self.run_id}"
        for emb, paths in sorted(self.files.items()):
            name = base if len(self.files) == 1 else f"{base}-{emb}"
            r = datasets.ingest(ws, name, options.member, site, options.policy, emb, sorted(paths),
                                allow_out_of_limits=True)
            out.append({"dataset": name, "embodiment": emb, "episodes": r.episodes, "frames": r.frames,
                        "ledger_index": r.ledger_indices[-1]})
        self.discard()
        return out

    def discard(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)
