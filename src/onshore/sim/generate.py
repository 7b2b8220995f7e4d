"""Generate a member's telemetry: expert episodes from a simulator, written ready for ingest.

``generate`` runs the scripted expert of an environment on each task, ``episodes`` times per
task, and writes into ``out``:

- ``frames-00000.parquet``, ``frames-00001.parquet``, ...: frames in the frame schema
  (:func:`onshore.telemetry.frames.frame_schema` plus the environment's extra columns, e.g.
  ``fault``), ``EPISODES_PER_FILE`` episodes per file, one row group per episode, episodes in
  order (task by task, then episode by episode), ``episode_index`` counting from 0;
- ``<embodiment>.toml``: the embodiment spec; its ``[extra]`` table keeps the simulator's named
  state groups (``groups``, one stem token each in a model) and records the simulator, the
  sensor options and the generator's seed;
- ``generate.json``: a sidecar with the same record plus tasks, texts, episode seeds and
  package versions.

The same arguments give byte-identical files whatever the number of workers: each episode's
randomness derives from (env, seed, task, index) alone, results are written in episode order,
and nothing in the files depends on time or on the machine's worker count.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.errors import ValidationError
from onshore.sim import registry
from onshore.sim.parallel import check_workers, map_ordered, workers_for
from onshore.sim.rollout import EpisodeFrames, EpisodeSpec, check_policy_sees, rollout
from onshore.sim.sensors import SensorOptions, control_period
from onshore.sim.versions import package_versions
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Embodiment

EPISODES_PER_FILE = 100
SIDECAR = "generate.json"


@dataclass(frozen=True)
class GenerateResult:
    """What ``generate`` wrote. ``wall_seconds`` and ``workers`` are not written to any file."""

    env: str
    embodiment: str
    tasks: list[str]
    episodes: int  # in total (tasks x episodes per task)
    frames: int
    successes: int  # episodes that reached a success state at least once
    seed: int
    out: Path
    files: list[Path]
    embodiment_path: Path
    sidecar_path: Path
    workers: int
    wall_seconds: float
    shutdowns: int = 0  # episodes the machine ended itself (TEP plant trips)
    sensors: dict[str, object] = field(default_factory=dict)


def episode_specs(env: str, tasks: list[str], episodes: int, seed: int) -> list[EpisodeSpec]:
    """The episodes of a run, in output order: task by task, ``episodes`` per task."""
    specs = []
    for task in tasks:
        for i in range(episodes):
            specs.append(EpisodeSpec(env=env, task=task, index=i, episode_index=len(specs), seed=seed))
    return specs


def _after_success(env: str) -> int | None:
    if env == "metaworld":
        from onshore.sim.metaworld import AFTER_SUCCESS_FRAMES

        return AFTER_SUCCESS_FRAMES
    return None  # TEP: a plant is never "done"; episodes run their length


def _run_episode(spec: EpisodeSpec, sensors: SensorOptions, seconds: float | None,
                 expert_sees: str = "sensed") -> EpisodeFrames:
    """Worker job: one expert episode (module level, so worker processes can unpickle it)."""
    env = registry.make_env(spec.env)
    period = control_period(sensors, env.dt)
    return rollout(env, env.expert(period), spec, sensors=sensors, seconds=seconds,
                   after_success=_after_success(spec.env), policy_sees=expert_sees)


def list_column(rows: np.ndarray) -> pa.Array:
    """A ``list<float32>`` column from a [T, D] float32 array."""
    t, d = rows.shape
    offsets = pa.array(np.arange(0, (t + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), type=pa.float32()))


def episode_table(ep: EpisodeFrames, schema: pa.Schema) -> pa.Table:
    """One episode as a table of ``schema`` (the frame schema plus extra columns)."""
    n = ep.length
    cols = {
        F.EPISODE: pa.array(np.full(n, ep.spec.episode_index, dtype=np.int64)),
        F.FRAME: pa.array(np.arange(n, dtype=np.int64)),
        F.TIMESTAMP: pa.array(ep.timestamp, type=pa.float64()),
        F.STATE: list_column(ep.state),
        F.ACTION: list_column(ep.action),
        F.TASK: pa.array([ep.task_text] * n, type=pa.string()),
        F.REWARD: pa.array(ep.reward, type=pa.float32()),
        F.DONE: pa.array(ep.done, type=pa.bool_()),
        F.SUCCESS: pa.array(ep.success, type=pa.bool_()),
    }
    for name, values in ep.extra.items():
        cols[name] = pa.array(values, type=schema.field(name).type)
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def _check_out(out: Path, emb_name: str) -> None:
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} is a file; --out must name a folder")
    if out.exists():
        clash = sorted(out.glob("frames-*.parquet")) + [
            p for p in (out / f"{emb_name}.toml", out / SIDECAR) if p.exists()]
        if clash:
            raise ValidationError(f"{out} already holds generated telemetry ({clash[0].name}); "
                                  "choose an empty folder or remove those files")


def generate(
    env: str,
    tasks: list[str] | None,
    episodes: int,
    seed: int,
    out: Path,
    workers: int | None = None,
    sensors: SensorOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    seconds: float | None = None,
    expert_sees: str = "sensed",
) -> GenerateResult:
    """Run the expert of ``env`` for ``episodes`` episodes per task and write them into ``out``.

    ``tasks``: task names (Meta-World v3 names such as ``"pick-place-v3"``; TEP scenarios such
    as ``"base"`` or ``"idv-4"``), or ``None`` for the environment's default set. ``workers``:
    processes to use, this one among them (default: all cores, fewer for a short run).
    ``sensors``: the member's sensor model (default: exact readings at the simulator's rate).
    ``progress(done, total)`` is called per episode.
    ``seconds`` caps each episode's simulated time (default: the environment's episode length).
    ``expert_sees``: ``"sensed"`` (the expert acts on the member's sensor readings, as its
    controller would) or ``"exact"`` (it acts on the true state; the frames still record the
    sensed readings): recorded in the sidecar and the embodiment's ``extra``.

    Refused (``ValidationError``, nothing written): an unknown env or task, ``episodes`` < 1,
    ``workers`` < 1, a negative ``seed``, an unknown ``expert_sees``, a control rate faster than
    the simulator, an ``out`` that is a file or already holds generated telemetry.
    """
    started = time.monotonic()
    mod = registry.env_module(env)
    task_list = registry.resolve_tasks(env, tasks)
    registry.check_episodes_and_seed(episodes, seed)
    if seconds is not None and not seconds > 0:
        raise ValidationError(f"episode length must be a positive number of seconds, got {seconds}")
    n_workers = check_workers(workers)
    check_policy_sees(expert_sees)
    sensors = sensors or SensorOptions()
    base: Embodiment = mod.embodiment()
    period = control_period(sensors, 1.0 / base.control_hz)  # refuses too fast a rate early
    out = Path(out)
    _check_out(out, base.name)

    sim_env = registry.make_env(env)
    specs = episode_specs(env, task_list, episodes, seed)
    schema = F.frame_schema(dict(sim_env.extra_columns))
    record = {
        "generator": "onshore.sim.generate",
        "env": env,
        "seed": seed,
        "episodes_per_task": episodes,
        "episode_seconds": seconds if seconds is not None else sim_env.default_seconds,
        "simulator_step_s": sim_env.dt,
        "sensors": sensors.to_dict(),
        "expert_sees": expert_sees,
    }
    # The simulator's own extra (its named state groups) stays: models trained on this telemetry
    # build one stem token per named group, not blocks of eight channels.
    emb = Embodiment(name=base.name, control_hz=1.0 / period, state=base.state,
                     action=base.action, description=base.description, extra={**base.extra, **record})

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    writer: pq.ParquetWriter | None = None
    frames = successes = shutdowns = 0
    job = partial(_run_episode, sensors=sensors, seconds=seconds, expert_sees=expert_sees)
    try:
        # Chunks of neighbouring episodes (mostly one task) spare workers building environments
        # and goal sets for every task; small enough that all workers stay busy.
        n_workers = workers_for(len(specs), workers)
        chunk = max(1, min(episodes, math.ceil(len(specs) / (2 * n_workers))))
        for ep in map_ordered(job, specs, n_workers, progress, chunksize=chunk, preload=[__name__, *mod.PRELOAD]):
            if ep.spec.episode_index % EPISODES_PER_FILE == 0:
                if writer is not None:
                    writer.close()
                files.append(out / f"frames-{len(files):05d}.parquet")
                # Fixed writer options: the bytes depend on the data and the pyarrow version only.
                writer = pq.ParquetWriter(files[-1].with_suffix(".partial"), schema,
                                          compression="zstd", compression_level=3)
            assert writer is not None
            writer.write_table(episode_table(ep, schema), row_group_size=max(1, ep.length))
            frames += ep.length
            successes += int(ep.succeeded)
            shutdowns += int(ep.terminated)
        if writer is not None:
            writer.close()
            writer = None
    except BaseException:
        if writer is not None:
            writer.close()
        for f in files:
            f.with_suffix(".partial").unlink(missing_ok=True)
        raise
    # Files appear under their final names only once all are complete.
    for f in files:
        f.with_suffix(".partial").replace(f)

    emb_path = out / f"{emb.name}.toml"
    emb.write(emb_path)
    sidecar = {
        **record,
        "embodiment": emb.name,
        "control_hz": emb.control_hz,
        "tasks": [{"name": t, "text": mod.task_text(t)} for t in task_list],
        "episodes": [{"episode_index": s.episode_index, "task": s.task, "index": s.index,
                      "episode_seed": s.episode_seed} for s in specs],
        "frames": frames,
        "successes": successes,
        "shutdowns": shutdowns,
        "files": [f.name for f in files],
        "versions": package_versions(),
    }
    side_path = out / SIDECAR
    side_path.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return GenerateResult(
        env=env, embodiment=emb.name, tasks=task_list, episodes=len(specs), frames=frames,
        successes=successes, seed=seed, out=out, files=files, embodiment_path=emb_path,
        sidecar_path=side_path, workers=n_workers, wall_seconds=time.monotonic() - started,
        shutdowns=shutdowns, sensors=sensors.to_dict())
