"""Simulator throughput as a person meets it: `onshore sim generate` and `onshore eval`, each a fresh process.

Run: ``.venv/bin/python bench/sim_bench.py [--episodes N] [--repeat R]``. Prints figures; it is
not a test. Every run is a new ``python -m onshore`` process, so wall times include starting
Python, importing the simulators, starting workers and building environments, as a real run
does (an earlier version evaluated on environments that generation in the same process had
already built, which flattered eval about 3x). Runs are interleaved across cases, R rounds;
figures are min / median / max.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import interleaved, rate_spread  # noqa: E402

CASES = {"metaworld": "reach-v3,pick-place-v3,drawer-open-v3", "tep": "base,idv-1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="onshore-sim-bench-"))
    counts: dict[str, int] = {}

    def generate(env: str, workers: int) -> float:
        out = tmp / f"{env}-{workers}-{time.monotonic_ns()}"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onshore", "sim", "generate", "--env", env, "--tasks", CASES[env],
                        "--episodes", str(args.episodes), "--workers", str(workers), "--out", str(out)],
                       check=True, capture_output=True)
        wall = time.perf_counter() - t
        counts[f"frames {env}"] = sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet"))
        return wall

    def evaluate(env: str) -> float:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "onshore", "eval", "--env", env, "--tasks", CASES[env],
                              "--episodes", str(args.episodes), "--workers", "1", "--json"],
                             check=True, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t
        rep = json.loads(out.stdout)
        counts[f"steps {env}"] = round(sum(t["episodes"] * t["mean_length"] for t in rep["tasks"].values()))
        return wall

    cases = {}
    for env in CASES:
        for workers in (1, 2):
            cases[f"generate {env} workers={workers}"] = (lambda e=env, w=workers: generate(e, w))
        cases[f"eval {env} workers=1"] = (lambda e=env: evaluate(e))
    times = interleaved(cases, args.repeat)
    print(f"{args.episodes} episodes per task, repeat {args.repeat}, interleaved, fresh process per run; "
          "min / median / max")
    for name, t in times.items():
        kind, env = name.split()[:2]
        episodes = args.episodes * len(CASES[env].split(","))
        if kind == "generate":
            print(f"{name:30s} {rate_spread(60 * episodes, t, '.1f')} episodes/min   "
                  f"{rate_spread(counts[f'frames {env}'], t)} frames/s")
        else:
            print(f"{name:30s} {rate_spread(counts[f'steps {env}'], t)} control steps/s (process start, "
                  "envs, policy, simulator, scoring)")


if __name__ == "__main__":
    main()
