"""Model and training figures: parameter counts, batch-1 act latency, samples/s (1 vs 2 processes),
peak memory of training on a large dataset.

Run: ``.venv/bin/python bench/train_bench.py [--frames 2000000] [--config small] [--steps 60]``.
Prints figures; it is not a test. Every training figure runs the real path a person runs
(``onshore train`` in a fresh process, through the store at the site: decisions, key releases,
encrypted shards), on generated Sawyer-shaped telemetry (smooth random signals inside the
embodiment's limits; the simulators are too slow to make millions of frames for a benchmark).

- act latency: ``ModelPolicy.act`` with temporal ensembling, one torch thread, after warm-up;
- samples/s: ``onshore train --threads 1`` vs ``torchrun --nproc-per-node 2 ... --threads 1``
  (DDP on gloo), same global batch, timing from the first to the last step (the rate the
  training loop reports);
- peak RSS: the training process's maximum resident set (``getrusage`` of the child), beside
  the size the dataset would have as float32 arrays in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

POLICY = """jurisdictions = ["JP"]
sites = []
purposes = ["foundation-pretraining"]
expires = 2031-03-31
derived_models = "keep"
"""


def params_and_latency(acts: int) -> None:
    import torch

    from onshore.model.network import CONFIGS, EmbodimentSpec, FoundationModel, parameter_count, state_groups
    from onshore.model.policy import LoadedModel, ModelPolicy
    from onshore.sim import metaworld

    torch.set_num_threads(1)
    emb = metaworld.embodiment()
    for size, cfg in CONFIGS.items():
        spec = EmbodimentSpec(emb.name, emb.state_dim, emb.action_dim, state_groups(emb, cfg.max_group),
                              (0.0,) * emb.state_dim, (1.0,) * emb.state_dim, (-1.0,) * 4, (1.0,) * 4)
        net = FoundationModel(cfg, [spec]).eval()
        line = f"{size:5s}: {parameter_count(net):>11,} parameters (d={cfg.d_model}, layers={cfg.n_layers}, " \
               f"H={cfg.chunk}, K={cfg.history})"
        if size != "base":
            agent = ModelPolicy(LoadedModel(net, {"text_encoder": "hashed-ngram"}, {}), emb.name)
            agent.reset("pick place")
            rng = np.random.default_rng(0)
            states = rng.normal(size=(acts + 200, emb.state_dim)).astype(np.float32)
            for s in states[:200]:
                agent.act(s)
            times = np.empty(acts)
            for i, s in enumerate(states[200:]):
                t = time.perf_counter()
                agent.act(s)
                times[i] = time.perf_counter() - t
            line += f"; act (batch 1, 1 thread, ensembling) p50 {np.percentile(times, 50) * 1e3:.2f} ms, " \
                    f"p99 {np.percentile(times, 99) * 1e3:.2f} ms"
        print(line, flush=True)


def synthetic_frames(frames: int, episode_len: int, seed: int) -> pa.Table:
    """Smooth signals inside the sawyer-metaworld limits; actions a fixed function of the state."""
    from onshore.sim import metaworld

    emb = metaworld.embodiment()
    rng = np.random.default_rng(seed)
    lo = np.array([c.low for c in emb.state], np.float32)
    hi = np.array([c.high for c in emb.state], np.float32)
    t = np.arange(frames, dtype=np.float32) % episode_len
    phase = rng.uniform(0, 6.28, size=emb.state_dim).astype(np.float32)
    freq = rng.uniform(0.005, 0.05, size=emb.state_dim).astype(np.float32)
    state = lo + (hi - lo) * (0.5 + 0.3 * np.sin(t[:, None] * freq + phase))
    w = rng.normal(size=(emb.state_dim, emb.action_dim)).astype(np.float32) / 6
    action = np.tanh(((state - lo) / (hi - lo) - 0.5) @ w).astype(np.float32)
    ep = (np.arange(frames) // episode_len).astype(np.int64)
    return pa.table({
        "episode_index": ep, "frame_index": t.astype(np.int64), "timestamp": (t / emb.control_hz).astype(np.float64),
        "observation.state": pa.FixedSizeListArray.from_arrays(state.ravel(), emb.state_dim).cast(
            pa.list_(pa.float32())),
        "action": pa.FixedSizeListArray.from_arrays(action.ravel(), emb.action_dim).cast(pa.list_(pa.float32())),
        "task": pa.array(["pick place"] * frames),
    })


def workspace(root: Path, frames: int) -> Path:
    from onshore.sim import metaworld
    from onshore.workspace import Workspace, datasets, registry

    ws = Workspace.init(root / "ws", "bench")
    registry.add_site(ws, "sakai", "JP", "storage,compute")
    registry.add_member(ws, "m")
    emb_file = root / "sawyer.toml"
    metaworld.embodiment().write(emb_file)
    registry.add_embodiment(ws, emb_file)
    (root / "policy.toml").write_text(POLICY)
    files = []
    for i, start in enumerate(range(0, frames, 500_000)):
        n = min(500_000, frames - start)
        table = synthetic_frames(n, 200, seed=i)
        table = table.set_column(0, "episode_index", pa.array(table.column(0).to_numpy() + start // 200))
        pq.write_table(table, root / f"part-{i}.parquet")
        files.append(root / f"part-{i}.parquet")
    datasets.ingest(ws, "arms", "m", "sakai", root / "policy.toml", "sawyer-metaworld", files)
    ws.close()
    return root / "ws"


def train_cmd(ws: Path, name: str, config: str, steps: int, batch: int) -> list[str]:
    return ["-m", "onshore", "-w", str(ws), "train", "--site", "sakai", "--datasets", "arms", "--purpose",
            "foundation-pretraining", "--config", config, "--steps", str(steps), "--batch-size", str(batch),
            "--checkpoint-every", str(steps), "--name", name, "--threads", "1", "--precision", "fp32",
            "--text-encoder", "hashed-ngram", "--json"]


def run_child(cmd: list[str]) -> tuple[dict, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"training failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(proc.stdout), max(peak, before) / 1024.0  # KiB -> MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=2_000_000, help="frames of the large dataset (peak RSS)")
    ap.add_argument("--config", default="small", help="model size for the training figures")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--acts", type=int, default=3000, help="act calls timed per size")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; torch threads pinned to 1 per process", flush=True)
    params_and_latency(args.acts)
    with tempfile.TemporaryDirectory() as tmp:
        small = workspace(Path(tmp) / "small", 40_000)
        one, _ = run_child([sys.executable, *train_cmd(small, "one", args.config, args.steps, args.batch_size)])
        two, _ = run_child([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            *train_cmd(small, "two", args.config, args.steps, args.batch_size)])
        print(f"training {args.config}, batch {args.batch_size}: 1 process x 1 thread {one['samples_per_s']:.0f} "
              f"samples/s; torchrun 2 processes x 1 thread (DDP, gloo) {two['samples_per_s']:.0f} samples/s "
              f"-> {two['samples_per_s'] / one['samples_per_s']:.2f}x", flush=True)
        t = time.perf_counter()
        big = workspace(Path(tmp) / "big", args.frames)
        print(f"generated and ingested {args.frames:,} frames in {time.perf_counter() - t:.0f} s", flush=True)
        res, peak = run_child([sys.executable, *train_cmd(big, "big", args.config, args.steps, args.batch_size)])
        in_memory = args.frames * (39 + 4) * 4 / 2**20
        print(f"training on {args.frames:,} frames: peak RSS {peak:.0f} MiB (the frames as float32 arrays would "
              f"take {in_memory:.0f} MiB; shards hold up to 1,000,000 frames and one is decrypted at a time); "
              f"{res['samples_per_s']:.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
