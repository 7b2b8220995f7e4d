"""Runs come back as data: what a served machine did, recorded as episodes and ingested.

Each session of the policy server is one episode per ``reset``: for every ``act`` the state that
arrived, the command sent back (after the envelope), the interventions as a bit set (see
:func:`onshore.serve.envelope.bits`), and the deadline misses and bridge interventions the
client reported. Finished episodes are spooled under the serving site's folder
(``runs/.spool/RUN``), so memory does not grow with a long run: each episode is a Parquet file
sealed (``keys/sealed.py``) under a data key that lives only in the server's memory, so a server
killed mid-run leaves noise, never plaintext telemetry (``onshore doctor --repair`` removes it;
the server holds ``RUN/.lock`` while it runs, so a live spool is told from a dead one). When the
server stops the episodes are opened in anonymous memory files (``memfd``, gone with the
process) and ingested as a resident dataset at the serving site under the usage policy the member
names (``--record-policy``, which may not be looser than the model's effective policy), one
dataset per embodiment, whose ``data.ingest`` entry names the model in its ``provenance``; then
the spool is deleted, ingested or not (no one else could open it). States are
recorded as the machine reported them (values outside the channel limits are kept and counted
in the ingest entry); commands are always inside the limits, since the envelope made them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.keys.envelope import new_data_key
from onshore.keys.sealed import seal, unseal
from onshore.names import model_stem
from onshore.telemetry import frames as F
from onshore.workspace.paths import SPOOL_LOCK

INTERVENTIONS = "envelope.interventions"
DEADLINE_MISSES = "bridge.deadline_misses"
BRIDGE_INTERVENTIONS = "bridge.interventions"
EXTRA = {INTERVENTIONS: pa.int64(), DEADLINE_MISSES: pa.int64(), BRIDGE_INTERVENTIONS: pa.int64()}
#: what a spooled episode is called: sealed Parquet
SEALED_SUFFIX = ".parquet.sealed"


def _context(run_id: str, name: str) -> bytes:
    return f"onshore-recording:v1:{run_id}:{name}".encode()


@contextmanager
def _in_memory(blobs: list[tuple[str, bytes]], spare: Path) -> Iterator[list[Path]]:
    """Paths to files holding ``blobs`` that exist only in this process's memory (Linux ``memfd``;
    elsewhere a private temporary folder under ``spare``, removed on the way out)."""
    if hasattr(os, "memfd_create"):
        fds: list[int] = []
        try:
            for name, data in blobs:
                fd = os.memfd_create(name, os.MFD_CLOEXEC)
                fds.append(fd)
                with os.fdopen(os.dup(fd), "wb") as f:
                    f.write(data)
            yield [Path(f"/proc/self/fd/{fd}") for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(dir=spare) as tmp:
        paths = []
        for name, data in blobs:
            (Path(tmp) / name).write_bytes(data)
            paths.append(Path(tmp) / name)
        yield paths


@dataclass(frozen=True)
class RecordOptions:
    """Record the run as dataset(s) owned by ``member`` under the policy file ``policy``.

    ``dataset`` names it (default ``MODEL-run-RUNID``, ``NAME-vV-run-RUNID`` for version V >= 2);
    with several embodiments served, each gets ``-EMBODIMENT`` appended."""

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
        self._key = new_data_key()  # in memory only: what a killed server leaves cannot be opened
        self._held: IO[str] | None = None

    def _claim_spool(self) -> None:
        # the folder and its lock come into being together, before the first file (under self._lock)
        if self._held is None:
            self.spool.mkdir(parents=True, exist_ok=True)
            self._held = open(self.spool / SPOOL_LOCK, "w")  # noqa: SIM115 - held for the recorder's life
            fcntl.flock(self._held, fcntl.LOCK_EX)

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
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        with self._lock:
            self._claim_spool()
        folder = self.spool / ep.embodiment
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"episode-{index:06d}{SEALED_SUFFIX}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(seal(self._key, buf.getvalue().to_pybytes(), _context(self.run_id, path.name)))
        tmp.rename(path)
        with self._lock:
            self.files.setdefault(ep.embodiment, []).append(path)

    def ingest(self, ws: Any, site: str, model: str, options: RecordOptions) -> list[dict[str, Any]]:
        """Ingest the spooled episodes at ``site``: one dataset per embodiment; returns
        [{dataset, embodiment, episodes, frames, ledger_index}] (empty when nothing was recorded).
        Each ``data.ingest`` entry names the model in its ``provenance``. The spool is removed
        afterwards whatever happened: its key dies with this process, so no one could open it."""
        from onshore.workspace import datasets

        out = []
        base = options.dataset or f"{model_stem(model)}-run-{self.run_id}"
        provenance = {"model": model, "site": site, "action": "serve", "recording": self.run_id}
        try:
            for emb, paths in sorted(self.files.items()):
                name = base if len(self.files) == 1 else f"{base}-{emb}"
                blobs = [(p.name.removesuffix(".sealed"), unseal(self._key, p.read_bytes(),
                                                                 _context(self.run_id, p.name), str(p)))
                         for p in sorted(paths)]
                with _in_memory(blobs, self.spool) as plain:
                    r = datasets.ingest(ws, name, options.member, site, options.policy, emb, plain,
                                        allow_out_of_limits=True, provenance=provenance)
                out.append({"dataset": name, "embodiment": emb, "episodes": r.episodes, "frames": r.frames,
                            "ledger_index": r.ledger_indices[-1]})
        finally:
            self.discard()
        return out

    def discard(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)
        with self._lock:
            if self._held is not None:
                self._held.close()
                self._held = None


def ingest_frames(ws: Any, name: str, member: str, site: str, policy: Path, embodiment: str, *,
                  episode: np.ndarray, frame: np.ndarray, time: np.ndarray, state: np.ndarray, action: np.ndarray,
                  task: list[str], extra: dict[str, pa.Array]) -> None:
    """Frames a monitor or shadow run watched, ingested as dataset ``name`` of ``member`` at ``site``
    under ``policy`` (an ordinary ingest: decided, recorded, all or nothing). ``done`` marks each
    episode's last frame; reward is 0 and success False (a watched plant has neither); ``extra``
    adds columns (alarms, scores, proposals). Nothing outlives the call but the dataset."""
    from onshore.sim.generate import list_column
    from onshore.workspace import datasets

    n = len(frame)
    schema = F.frame_schema({k: v.type for k, v in extra.items()})
    ep = np.asarray(episode, dtype=np.int64)
    cols = {
        F.EPISODE: pa.array(ep), F.FRAME: pa.array(np.asarray(frame, dtype=np.int64)),
        F.TIMESTAMP: pa.array(np.asarray(time, dtype=np.float64)),
        F.STATE: list_column(np.asarray(state, dtype=np.float32)),
        F.ACTION: list_column(np.asarray(action, dtype=np.float32)),
        F.TASK: pa.array(task, type=pa.string()), F.REWARD: pa.array(np.zeros(n, np.float32)),
        F.DONE: pa.array(np.append(ep[1:] != ep[:-1], True)), F.SUCCESS: pa.array(np.zeros(n, dtype=bool)),
        **extra,
    }
    with tempfile.TemporaryDirectory(prefix="onshore-watched-") as tmp:
        path = Path(tmp) / "frames.parquet"
        pq.write_table(pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema), path)
        datasets.ingest(ws, name, member, site, policy, embodiment, [path])
