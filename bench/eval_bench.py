"""Closed-loop evaluation of a model with 1 worker against 2, as a person runs it (issue 22).

Builds a workspace once (Meta-World telemetry at one site, a model trained on it for a few
steps: its weights do not matter for speed, and an untrained model fails, so every episode runs
its full 500 steps), then times fresh ``python -m onshore eval --policy MODEL --site S --workers
W --json`` processes, 1 and 2 workers interleaved round by round, so each figure includes
starting Python, imports, starting workers, building environments and goal sets and opening
the sealed model. Checks that both give the same report (same seeds, same episodes) and prints
the wall times, the speed-up and the load average the machine had, with a control: the speed-up
two processes of a plain CPU loop get against one in the same rounds (on a shared machine, the
most a second worker could give). Goal: >= 1.6x on 50 episodes.

Usage: .venv/bin/python bench/eval_bench.py [--tasks reach-v3,push-v3] [--episodes 25] [--repeat 2]
[--size small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICY = """jurisdictions = ["JP"]
sites = []
purposes = ["fine-tuning"]
expires = 2031-03-31
derived_models = "keep"
"""


def build(root: Path, size: str) -> Path:
    from onshore.model.text import HASHED
    from onshore.sim.generate import generate
    from onshore.train.loop import TrainConfig, TrainRequest, train
    from onshore.workspace import Workspace, datasets, registry

    generate("metaworld", ["reach-v3"], 2, seed=1, out=root / "arms", workers=1)
    ws = Workspace.init(root / "ws", "eval-bench")
    registry.add_site(ws, "sakai", "JP", "storage,compute")
    registry.add_member(ws, "arm-maker")
    registry.add_embodiment(ws, next((root / "arms").glob("*.toml")))
    (root / "policy.toml").write_text(POLICY)
    datasets.ingest(ws, "arms", "arm-maker", "sakai", root / "policy.toml", "sawyer-metaworld",
                    sorted((root / "arms").glob("*.parquet")))
    config = TrainConfig(steps=4, batch_size=8, checkpoint_every=4, log_every=2, precision="fp32",
                         text_encoder=HASHED, warmup=1)
    train(ws, TrainRequest("arm-model", "sakai", "fine-tuning", ("arms",), size=size, train=config))
    ws.close()
    return root / "ws"


BURN = "import sys; x = 0\nfor i in range(int(sys.argv[1])): x += i * i"


def burn(processes: int, work: int = 40_000_000) -> float:
    """Wall seconds for ``processes`` processes each doing the same pure-Python loop: what the
    machine gives two processes against one right now (the ceiling of any 2-worker speed-up)."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", BURN, str(work)]) for _ in range(processes)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default="reach-v3,push-v3")
    ap.add_argument("--episodes", type=int, default=25, help="episodes per task")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--size", default="small")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare, interleaved")
    ap.add_argument("--workspace", type=Path, help="reuse a workspace this bench built before")
    args = ap.parse_args()
    ws = args.workspace or build(Path(tempfile.mkdtemp(prefix="onshore-eval-bench-")), args.size)
    counts = [int(w) for w in args.workers.split(",")]
    env = {**os.environ, "ONSHORE_WORKSPACE": str(ws)}
    times: dict[int, list[float]] = {w: [] for w in counts}
    reports: dict[int, dict] = {}
    loads = [loadavg()]
    burns: list[tuple[float, float]] = []
    for _ in range(args.repeat):
        burns.append((burn(1), burn(2)))
        for w in counts:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "onshore", "eval", "--env", "metaworld", "--tasks", args.tasks,
                                  "--episodes", str(args.episodes), "--seed", "0", "--policy", "arm-model", "--site",
                                  "sakai", "--workers", str(w), "--json"], capture_output=True, text=True, env=env)
            times[w].append(time.perf_counter() - t)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            rep = json.loads(out.stdout)
            rep.pop("report_files", None)
            if w in reports and reports[w] != rep:
                raise SystemExit(f"{w} worker(s) gave different reports from one run to the next")
            reports[w] = rep
            loads.append(loadavg())
    first = reports[counts[0]]
    for w in counts[1:]:
        if reports[w] != first:
            raise SystemExit(f"{w} workers gave a different report from {counts[0]}: results must not depend on it")
    n = args.episodes * len(args.tasks.split(","))
    steps = round(sum(t["episodes"] * t["mean_length"] for t in first["tasks"].values()))
    print(f"onshore eval of a `{args.size}` model, Meta-World {args.tasks} x {args.episodes} = {n} episodes, "
          f"{steps} control steps; fresh process per run, {args.repeat} round(s) interleaved; "
          f"{os.cpu_count()} cores; load average before and after each run: {' | '.join(loads)}")
    base = sorted(times[counts[0]])[len(times[counts[0]]) // 2]
    for w in counts:
        med = sorted(times[w])[len(times[w]) // 2]
        print(f"  {w} worker(s): {' / '.join(f'{t:.1f}' for t in times[w])} s (median {med:.1f} s, "
              f"{steps / med:.0f} steps/s), {base / med:.2f}x of {counts[0]} worker(s)")
    ceiling = [2 * one / two for one, two in burns]
    print(f"  control: a pure-Python loop, 2 processes against 1 in the same rounds: "
          f"{' / '.join(f'{c:.2f}x' for c in ceiling)} (what the machine's load left for a second process)")
    print("reports identical across worker counts: yes")
    print(f"workspace: {ws} (rerun on it with --workspace {ws})")


if __name__ == "__main__":
    main()
