"""Faults seen from the world model: ``onshore monitor fit`` and ``onshore monitor``.

A plant model predicts the next state and what its controller will do. When the plant drifts
from normal operation (a fault, a sticking valve, a fouled sensor), those predictions go wrong
before anything trips. The statistic is :mod:`onshore.eval.faults`' (each frame's residuals
divided by their spread on normal data, squared, averaged over channels, then over a trailing
window of frames), the same one ``bench/fault_bench.py`` measures on IDV 1-20.

``fit`` reads a resident dataset of normal operation at a site (decided and recorded like any
read), fits the residual spread on 70% of its episodes and sets the threshold at the asked
false-alarm rate on the other 30%, and records the fit (normalisers, window, threshold, the model's
digest, the dataset and its shards) in a ``model.use`` ledger entry signed by the site: the
monitor reads its threshold from the ledger, so an edited file cannot move it, and an auditor
sees what every alarm was measured against. ``run`` watches a live stream (the simulated plant
under its own PI controller), raises an alarm when the windowed statistic crosses the threshold,
and, with a recording member and policy, ingests the watched frames with their ``alarm`` flag and
score as a resident dataset of that member at the site (the alarms are data of the plant's owner,
under the owner's policy). Refused: a model or dataset the site may not use (``PolicyDenied``),
a dataset of another embodiment, too few normal episodes, a model trained with action feedback,
a monitor run with no fit recorded (``NotFoundError`` naming ``onshore monitor fit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onshore.errors import NotFoundError, ValidationError
from onshore.eval import faults as FD
from onshore.serve.opcua import Security
from onshore.workspace import datasets
from onshore.workspace.models import get_model, load_model_for
from onshore.workspace.registry import get_embodiment, get_site
from onshore.workspace.workspace import Workspace

FIT = "monitor.fit"
RUN = "monitor.run"
MIN_EPISODES = 4
HOLDOUT = 0.3


@dataclass(frozen=True)
class MonitorFit:
    """What a monitor measures against, as its ``model.use`` entry records it."""

    model: str
    digest: str
    site: str
    embodiment: str
    task: str
    window: int
    far: float
    threshold: float
    scale: FD.ResidualScale
    dataset: str
    episodes: int
    frames: int
    index: int = -1  # the ledger entry

    def to_json(self) -> dict[str, Any]:
        return {"use": FIT, "model": self.model, "digest": self.digest, "site": self.site,
                "embodiment": self.embodiment, "task": self.task, "window": self.window, "far": self.far,
                "threshold": self.threshold, "scale": self.scale.to_json(), "dataset": self.dataset,
                "episodes": self.episodes, "frames": self.frames}


def _episodes(table: Any) -> list[tuple[np.ndarray, np.ndarray, str]]:
    from onshore.telemetry import frames as F

    ep = table.column(F.EPISODE).to_numpy()
    st = np.asarray(table.column(F.STATE).to_pylist(), dtype=np.float32)
    ac = np.asarray(table.column(F.ACTION).to_pylist(), dtype=np.float32)
    task = table.column(F.TASK).to_pylist() if F.TASK in table.column_names else [""] * len(ep)
    out = []
    for e in np.unique(ep):
        m = np.flatnonzero(ep == e)
        out.append((st[m], ac[m], str(task[m[0]])))
    return out


def fit(ws: Workspace, model: str, site: str, dataset: str, *, window: int = 10, far: float = 0.01,
        purpose: str | None = None) -> MonitorFit:
    """Fit the monitor of ``model`` at ``site`` on the normal-operation ``dataset``; recorded (see module)."""
    if not 1 <= window <= 10_000:
        raise ValidationError(f"--window must be 1 to 10000 frames, got {window}")
    if not (math.isfinite(far) and 0 < far < 0.5):
        raise ValidationError(f"--far must be a false-alarm rate between 0 and 0.5, got {far}")
    row = get_model(ws, model)
    emb = ws.row("dataset", dataset)["embodiment"]
    loaded = load_model_for(ws, model, site, "read", purpose)
    if emb not in loaded.model.specs:
        raise ValidationError(f"dataset {dataset!r} is telemetry of {emb}; model {model!r} acts for "
                              f"{', '.join(sorted(loaded.model.specs))}")
    eps = _episodes(datasets.read(ws, dataset, site, purpose))
    if len(eps) < MIN_EPISODES:
        raise ValidationError(f"dataset {dataset!r} has {len(eps)} episode(s); a monitor needs at least "
                              f"{MIN_EPISODES} of normal operation (some to fit, some to set the threshold)")
    task = eps[0][2]
    resid = [FD.model_residuals(loaded, emb, task, s, a) for s, a, _ in eps]
    n_hold = max(1, round(HOLDOUT * len(eps)))
    scale = FD.ResidualScale.fit(np.concatenate(resid[:-n_hold]))
    limit = FD.threshold([FD.trailing_mean(scale.score(r), window) for r in resid[-n_hold:]], far)
    digest = str((row.get("files") or {}).get("model.safetensors", ""))  # the weights' SHA-256, as released
    result = MonitorFit(model, digest, site, emb, task, window, far, limit, scale, dataset, len(eps),
                        int(sum(len(s) for s, _, _ in eps)))
    index = ws.record("model.use", f"site:{site}", result.to_json())
    return MonitorFit(**{**result.__dict__, "index": index})


def latest_fit(ws: Workspace, model: str, site: str) -> MonitorFit:
    """The newest monitor fit of ``model`` at ``site`` the ledger records (signed by the site)."""
    found = None
    for e in ws.ledger.entries(kinds=("model.use",)):
        b = e.entry.body
        ours = b.get("use") == FIT and b.get("model") == model and b.get("site") == site
        if ours and e.entry.actor == f"site:{site}":
            found = (e.index, b)
    if found is None:
        raise NotFoundError(f"no monitor of model {model!r} was fitted at {site}; run 'onshore monitor fit "
                            f"{model} --site {site} --dataset NORMAL-DATA' first")
    index, b = found
    try:
        width = len(b["scale"]["centre"])
        return MonitorFit(str(b["model"]), str(b["digest"]), str(b["site"]), str(b["embodiment"]), str(b["task"]),
                          int(b["window"]), float(b["far"]), float(b["threshold"]),
                          FD.ResidualScale.from_json(b["scale"], width), str(b["dataset"]), int(b["episodes"]),
                          int(b["frames"]), index)
    except (KeyError, TypeError, ValueError) as e:
        raise ValidationError(f"ledger entry {index}: a monitor fit that cannot be read ({e})") from None


class Monitor:
    """The live statistic: feed each frame's state and the controller's action, get (score, alarm)."""

    def __init__(self, loaded: Any, fit: MonitorFit) -> None:
        import torch

        self.loaded, self.fit = loaded, fit
        self.spec = loaded.model.specs[fit.embodiment]
        k = loaded.config.history
        self._hist = np.zeros((k, self.spec.state_dim), dtype=np.float32)
        self._task = torch.from_numpy(loaded.task_vector(fit.task)[None])
        self._pred_next: np.ndarray | None = None
        self._scores: list[float] = []
        self._t = 0

    def restart(self) -> None:
        """Forget the history (a gap in the stream): the next frame starts afresh, like a first one."""
        self._pred_next = None
        self._t = 0
        self._scores.clear()

    def step(self, state: np.ndarray, action: np.ndarray) -> tuple[float, float, bool]:
        """(this frame's score, its window mean, alarm) for frame ``state`` and the controller's ``action``."""
        import torch

        s = self.spec.normalise_state(np.asarray(state, dtype=np.float32).reshape(-1))
        a = self.spec.scale_action(np.asarray(action, dtype=np.float32).reshape(-1))
        if self._t == 0:
            self._hist[:] = s
        else:
            self._hist[:-1] = self._hist[1:].copy()
            self._hist[-1] = s
        with torch.inference_mode():
            chunk, nxt = self.loaded.model.predict(self.fit.embodiment, torch.from_numpy(self._hist[None]), self._task)
        score = float("nan")
        if self._pred_next is not None:
            resid = np.concatenate([self._pred_next - s, chunk[0, 0].float().numpy() - a])[None]
            score = float(self.fit.scale.score(resid)[0])
            self._scores.append(score)
        self._pred_next = nxt[0].float().numpy()
        self._t += 1
        recent = self._scores[-self.fit.window:]
        stat = float(np.mean(recent)) if recent else 0.0
        return score, stat, bool(recent) and stat > self.fit.threshold


@dataclass(frozen=True)
class Watched:
    """One watched frame: what the plant showed, what its controller did, and what the monitor said."""

    state: np.ndarray
    action: np.ndarray
    alarm: int
    score: int  # the windowed statistic in millionths (an integer column of the recorded dataset)
    fault: int  # the simulator's label (0: none, or not known, as over OPC UA)
    frame: int


@dataclass(frozen=True)
class RunReport:
    frames: int
    alarms: int
    first_alarm: int | None  # frame
    fault_onset: int | None  # frame, when the simulator says (its ``fault`` column)
    dataset: str | None
    index: int


def run_simulated(ws: Workspace, model: str, site: str, task: str, *, seconds: float | None = None, seed: int = 0,
                  purpose: str | None = None, record: tuple[str, Path, str] | None = None) -> RunReport:
    """Watch the simulated Tennessee Eastman plant run ``task`` under its PI controller.

    ``record``: (member, policy file, dataset name) to ingest the watched frames, with ``alarm``
    (0/1), ``monitor_score`` (the windowed statistic, micro-units as an integer) and the
    simulator's ``fault`` label, as a resident dataset at ``site``.
    """
    from onshore.sim import tep
    from onshore.sim.rollout import EpisodeSpec

    f = latest_fit(ws, model, site)
    if f.embodiment != "tennessee-eastman":
        raise ValidationError(f"the simulated plant is Tennessee Eastman; this monitor watches {f.embodiment}")
    tep.check_tasks([task])
    loaded = load_model_for(ws, model, site, "read", purpose)
    mon = Monitor(loaded, f)
    env = tep.TepEnv()
    horizon = env.default_seconds if seconds is None else float(seconds)
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValidationError(f"--seconds must be positive, got {seconds}")
    state, extra = env.reset(EpisodeSpec("tep", task, 0, 0, seed), horizon)
    expert = env.expert()
    expert.reset(env.task_text(task))
    rows: list[Watched] = []
    first = onset = None
    for t in range(max(1, int(horizon / env.dt))):
        action = np.asarray(expert.act(np.asarray(state, dtype=np.float32)), dtype=np.float64)
        _, stat, alarm = mon.step(state, action)
        fault = int(extra.get("fault", 0))
        if fault and onset is None:
            onset = t
        if alarm and first is None:
            first = t
        rows.append(Watched(np.asarray(state, np.float32), action.astype(np.float32), int(alarm),
                            int(round(stat * 1e6)), fault, t))
        step = env.step(action)
        state, extra = step.state, step.extra
        if step.terminated:
            break
    name = None
    if record is not None:
        member, policy, name = record
        _ingest(ws, rows, f, member, policy, name, site, env.dt)
    idx = ws.record("model.use", f"site:{site}", {
        "use": RUN, "model": model, "site": site, "fit_index": f.index, "task": task, "seed": seed,
        "frames": len(rows), "alarms": sum(r.alarm for r in rows), "first_alarm": first, "dataset": name})
    return RunReport(len(rows), sum(r.alarm for r in rows), first, onset, name, idx)


def run_opcua(ws: Workspace, model: str, site: str, endpoint: str, map_file: Path, *, steps: int | None = None,
              seconds: float | None = None, frame_node: str | None = None, poll_s: float = 0.005,
              purpose: str | None = None, record: tuple[str, Path, str] | None = None,
              security: Security | None = None) -> RunReport:
    """Watch a plant over OPC UA: the map's state nodes and its action nodes (the controller's
    outputs, written by whatever controls the plant), for ``steps`` frames or ``seconds``; the
    session secured by ``security`` (an ``onshore.serve.opcua.Security``; default none, loopback only).

    With ``frame_node`` (a counter the PLC or the simulated plant advances once per control
    period), one frame is taken per new count and paired with the action that produced the next
    one, so nothing is sampled twice; a count that jumps by more than one (a missed period) starts
    the residuals afresh rather than comparing across the gap. Without it, the nodes are read once
    per ``1 / control_hz`` of the embodiment. Refused: an unreachable endpoint, a map whose node
    lists do not match the fitted embodiment (``OnshoreError``).
    """
    import asyncio

    from onshore.serve.bridge import BridgeMap

    f = latest_fit(ws, model, site)
    mapping = BridgeMap.from_toml(map_file)
    if mapping.embodiment != f.embodiment:
        raise ValidationError(f"{map_file}: the map is for {mapping.embodiment}; this monitor watches {f.embodiment}")
    if steps is None and seconds is None:
        raise ValidationError("give --steps or --seconds: how long to watch")
    loaded = load_model_for(ws, model, site, "read", purpose)
    spec = loaded.model.specs[f.embodiment]
    if (len(mapping.state), len(mapping.action)) != (spec.state_dim, spec.action_dim):
        raise ValidationError(f"{map_file}: {len(mapping.state)} state and {len(mapping.action)} action nodes; "
                              f"{f.embodiment} has {spec.state_dim} and {spec.action_dim}")
    hz = get_embodiment(ws, f.embodiment).control_hz
    rows = asyncio.run(_watch(endpoint, mapping, Monitor(loaded, f), hz, steps, seconds, frame_node, poll_s,
                              security))
    name = None
    if record is not None and rows:
        member, policy, name = record
        _ingest(ws, rows, f, member, policy, name, site, 1.0 / hz)
    alarms = sum(r.alarm for r in rows)
    first = next((r.frame for r in rows if r.alarm), None)  # the plant's frame, as run_simulated reports it
    idx = ws.record("model.use", f"site:{site}", {
        "use": RUN, "model": model, "site": site, "fit_index": f.index, "endpoint": endpoint, "frames": len(rows),
        "alarms": alarms, "first_alarm": first, "dataset": name})
    return RunReport(len(rows), alarms, first, None, name, idx)


async def _watch(endpoint: str, mapping: Any, mon: Monitor, hz: float, steps: int | None, seconds: float | None,
                 frame_node: str | None, poll_s: float, security: Security | None = None) -> list[Watched]:
    from contextlib import aclosing

    from onshore.serve.watch import watch

    rows: list[Watched] = []
    async with aclosing(watch(endpoint, mapping, hz, steps=steps, seconds=seconds, frame_node=frame_node,
                              poll_s=poll_s, security=security)) as frames:
        async for f in frames:
            if f.gap:
                mon.restart()  # a missed period: no residual across the gap
            _, stat, alarm = mon.step(f.state, f.action)
            rows.append(Watched(f.state.astype(np.float32), f.action.astype(np.float32), int(alarm),
                                int(round(stat * 1e6)), 0, f.index))
    return rows


def _ingest(ws: Workspace, rows: list[Watched], f: MonitorFit, member: str,
            policy: Path, name: str, site: str, dt: float) -> None:
    import pyarrow as pa

    from onshore.serve.record import ingest_frames

    get_site(ws, site)
    frame = np.array([r.frame for r in rows], dtype=np.int64)
    ingest_frames(ws, name, member, site, policy, f.embodiment, episode=np.zeros(len(rows), np.int64), frame=frame,
                  time=frame * dt, state=np.stack([r.state for r in rows]), action=np.stack([r.action for r in rows]),
                  task=[f.task] * len(rows),
                  extra={"alarm": pa.array([r.alarm for r in rows], type=pa.int64()),
                         "monitor_score": pa.array([r.score for r in rows], type=pa.int64()),
                         "fault": pa.array([r.fault for r in rows], type=pa.int64())})
