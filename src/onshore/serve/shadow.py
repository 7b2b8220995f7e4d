"""``onshore shadow``: the model beside the running controller, its proposals and the controller's
actions recorded as the plant owner's data, for ``onshore finetune`` to learn from (DAgger).

A model trained on its teacher's telemetry has only seen the states the teacher visits; its own
small errors take the plant where it has never been and its errors grow (covariate shift).
DAgger (Ross, Gordon and Bagnell, 2011) fixes that by letting the learner drive and asking the
teacher what it would have done in the states the learner reaches. On a plant the teacher is the
running controller, so the labels are free: the controller computes its output every period
whether or not it is applied.

``drive`` says who moves the plant: ``controller`` (pure shadow mode: the controller acts, the
model only proposes; safe on a live plant, but it adds no state the teacher would not visit),
``model`` (the model acts through the safety envelope, the controller's would-be output is the
label), or ``mix`` (per period, the model with probability ``beta``, else the controller: the
DAgger schedule). Every frame records the state, the label (the controller's output, as the
dataset's action, so ``finetune`` learns from it directly), the model's proposal, and which of
the two was applied. The recording is ingested at the site as a dataset of the plant's owner
under the owner's usage policy (decided and recorded like any ingest); the model's use is
decided as serving is (the site must be allowed to serve it).

Refused: a drive other than those three, a ``beta`` outside 0..1, an unknown scenario, a
model that does not act for the plant (``ValidationError``), a site that may not serve the model
or hold the owner's data (``PolicyDenied``). The simulated Tennessee Eastman plant under its PI
controller is the machine here (the controller's outputs are the labels); :func:`run_shadow_opcua`
shadows such a plant over OPC UA, its controller's action nodes the labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onshore.errors import ValidationError
from onshore.serve import envelope as E
from onshore.serve.opcua import Security
from onshore.serve.record import ingest_frames
from onshore.workspace.models import get_model, load_model_for
from onshore.workspace.workspace import Workspace

DRIVES = ("controller", "model", "mix")
EMBODIMENT = "tennessee-eastman"


@dataclass(frozen=True)
class ShadowReport:
    dataset: str
    episodes: int
    frames: int
    model_applied: int  # frames the model's (enveloped) command moved the plant
    shutdowns: int
    mean_abs_gap: float  # mean |proposal - label| over frames and channels, in the valves' percent
    index: int  # the ledger entry recording the run


def run_shadow(ws: Workspace, model: str, site: str, tasks: list[str], *, member: str, policy: Path,
               dataset: str, episodes: int = 1, seconds: float | None = None, seed: int = 0,
               drive: str = "controller", beta: float = 0.5, purpose: str | None = None) -> ShadowReport:
    """Run ``episodes`` per task beside the PI controller and ingest the recording as ``dataset``."""
    from onshore.model.policy import ModelPolicy
    from onshore.sim import tep
    from onshore.sim.rollout import EpisodeSpec

    if drive not in DRIVES:
        raise ValidationError(f"--drive must be one of {', '.join(DRIVES)}, got {drive!r}")
    if not (math.isfinite(beta) and 0.0 <= beta <= 1.0):
        raise ValidationError(f"--beta must be between 0 and 1, got {beta}")
    if episodes < 1:
        raise ValidationError(f"--episodes must be at least 1, got {episodes}")
    tep.check_tasks(tasks)
    purpose = purpose or str(get_model(ws, model)["purpose"])  # as `onshore serve` defaults it
    loaded = load_model_for(ws, model, site, "serve", purpose)
    if EMBODIMENT not in loaded.model.specs:
        raise ValidationError(f"model {model!r} does not act for {EMBODIMENT}; it knows "
                              f"{', '.join(sorted(loaded.model.specs))}")
    env = tep.TepEnv()
    emb = env.embodiment()
    horizon = env.default_seconds if seconds is None else float(seconds)
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValidationError(f"--seconds must be positive, got {seconds}")
    frames: list[dict[str, np.ndarray | float | int]] = []
    applied = shutdowns = 0
    gaps: list[np.ndarray] = []
    n_ep = 0
    for task in tasks:
        for i in range(episodes):
            spec = EpisodeSpec("tep", task, i, n_ep, seed)
            rng = np.random.default_rng([spec.episode_seed, 0xDA66])  # who drives: per episode, reproducible
            state, _ = env.reset(spec, horizon)
            controller = env.expert()
            controller.reset(env.task_text(task))
            agent = ModelPolicy(loaded, EMBODIMENT)
            agent.reset(env.task_text(task))
            envelope: E.Envelope | None = None  # live while the model drives
            last: np.ndarray | None = None  # the valves as last moved, by whichever drove
            for t in range(max(1, int(horizon / env.dt))):
                s = np.asarray(state, dtype=np.float32)
                label = np.asarray(controller.act(s), dtype=np.float64)
                proposal = np.asarray(agent.act(s), dtype=np.float64)
                by_model = drive == "model" or (drive == "mix" and rng.random() < beta)
                if by_model:
                    if envelope is None:  # taking over: rate limited from where the valves are
                        envelope = E.Envelope(E.Limits.from_embodiment(emb), initial=label if last is None else last)
                    move = envelope.command(proposal, t * env.dt).action  # clamped, ramped: what the plant gets
                else:
                    envelope, move = None, label
                last = move
                applied += int(by_model)
                gaps.append(np.abs(proposal - label))
                frames.append({"episode": n_ep, "frame": t, "time": t * env.dt, "state": s,
                               "action": label.astype(np.float32), "proposal": proposal.astype(np.float32),
                               "by_model": int(by_model), "task": env.task_text(task)})
                step = env.step(np.clip(move, [c.low for c in emb.action], [c.high for c in emb.action]))
                state = step.state
                if step.terminated:
                    shutdowns += 1
                    break
            n_ep += 1
    _ingest(ws, frames, member, policy, dataset, site)
    gap = float(np.mean(gaps)) if gaps else 0.0
    index = ws.record("model.use", f"site:{site}", {
        "use": "shadow", "model": model, "site": site, "dataset": dataset, "drive": drive,
        "beta": beta if drive == "mix" else None, "tasks": tasks, "episodes": n_ep, "seed": seed,
        "frames": len(frames), "model_applied": applied, "shutdowns": shutdowns, "mean_abs_gap": round(gap, 6)})
    return ShadowReport(dataset, n_ep, len(frames), applied, shutdowns, gap, index)


def run_shadow_opcua(ws: Workspace, model: str, site: str, endpoint: str, map_file: Path, *, member: str,
                     policy: Path, dataset: str, task: str = "base", steps: int | None = None,
                     seconds: float | None = None, frame_node: str | None = None, poll_s: float = 0.005,
                     purpose: str | None = None, security: Security | None = None) -> ShadowReport:
    """Pure shadow mode on a plant over OPC UA: the plant's own controller writes its action nodes
    (they are the labels), the model proposes on every frame's state and moves nothing; the frames
    are read as ``onshore monitor`` reads them (:mod:`onshore.serve.watch`) and ingested as
    ``dataset``, owned by ``member`` under ``policy``. ``task`` names the scenario whose instruction
    the model is given. A model-driven round over OPC UA goes through ``onshore bridge`` (which
    writes the model's commands through the envelope) with the controller's output on other nodes:
    not this function. Refused: a map for another embodiment, node counts that do not match, no
    ``steps`` or ``seconds`` (``ValidationError``), an unreachable endpoint (``OnshoreError``), a
    site that may not serve the model or hold the owner's data (``PolicyDenied``); nothing is
    recorded by a refusal before the model's use is decided.
    """
    import asyncio
    from contextlib import aclosing

    from onshore.model.policy import ModelPolicy
    from onshore.serve.bridge import BridgeMap
    from onshore.serve.watch import watch
    from onshore.sim import tep
    from onshore.workspace.registry import get_embodiment

    mapping = BridgeMap.from_toml(map_file)
    if mapping.embodiment != EMBODIMENT:
        raise ValidationError(f"{map_file}: the map is for {mapping.embodiment}; onshore shadow runs beside the "
                              f"{EMBODIMENT} plant's controller")
    if steps is None and seconds is None:
        raise ValidationError("give --steps or --seconds: how long to shadow the plant")
    if steps is not None and steps < 1:
        raise ValidationError(f"--steps must be at least 1, got {steps}")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValidationError(f"--seconds must be positive, got {seconds}")
    tep.check_tasks([task])
    purpose = purpose or str(get_model(ws, model)["purpose"])
    loaded = load_model_for(ws, model, site, "serve", purpose)
    if EMBODIMENT not in loaded.model.specs:
        raise ValidationError(f"model {model!r} does not act for {EMBODIMENT}; it knows "
                              f"{', '.join(sorted(loaded.model.specs))}")
    spec = loaded.model.specs[EMBODIMENT]
    if (len(mapping.state), len(mapping.action)) != (spec.state_dim, spec.action_dim):
        raise ValidationError(f"{map_file}: {len(mapping.state)} state and {len(mapping.action)} action nodes; "
                              f"{EMBODIMENT} has {spec.state_dim} and {spec.action_dim}")
    dt = 1.0 / get_embodiment(ws, EMBODIMENT).control_hz
    text = tep.task_text(task)
    agent = ModelPolicy(loaded, EMBODIMENT)

    async def shadow() -> list[dict]:
        rows: list[dict] = []
        agent.reset(text)
        async with aclosing(watch(endpoint, mapping, 1.0 / dt, steps=steps, seconds=seconds, frame_node=frame_node,
                                  poll_s=poll_s, security=security)) as frames:
            async for f in frames:
                if f.gap:
                    agent.reset(text)  # a missed period: the model's history starts again
                proposal = np.asarray(agent.act(f.state.astype(np.float32)), dtype=np.float64)
                rows.append({"episode": 0, "frame": f.index, "time": f.index * dt, "state": f.state.astype(np.float32),
                             "action": f.action.astype(np.float32), "proposal": proposal.astype(np.float32),
                             "by_model": 0, "task": text})
        return rows

    frames = asyncio.run(shadow())
    if frames:
        _ingest(ws, frames, member, policy, dataset, site)
    gap = float(np.mean([np.abs(f["proposal"] - f["action"]) for f in frames])) if frames else 0.0
    index = ws.record("model.use", f"site:{site}", {
        "use": "shadow", "model": model, "site": site, "dataset": dataset if frames else None, "drive": "controller",
        "beta": None, "tasks": [task], "endpoint": endpoint, "episodes": 1, "frames": len(frames),
        "model_applied": 0, "shutdowns": 0, "mean_abs_gap": round(gap, 6)})
    return ShadowReport(dataset, 1, len(frames), 0, 0, gap, index)


def _ingest(ws: Workspace, frames: list[dict], member: str, policy: Path, name: str, site: str) -> None:
    import pyarrow as pa

    from onshore.sim.generate import list_column

    def col(key: str) -> np.ndarray:
        return np.array([f[key] for f in frames])

    ingest_frames(ws, name, member, site, policy, EMBODIMENT, episode=col("episode"), frame=col("frame"),
                  time=col("time"), state=np.stack([f["state"] for f in frames]),
                  action=np.stack([f["action"] for f in frames]), task=[f["task"] for f in frames],
                  extra={"proposal": list_column(np.stack([f["proposal"] for f in frames])),
                         "by_model": pa.array(col("by_model").astype(np.int64))})
