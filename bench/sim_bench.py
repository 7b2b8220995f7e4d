"""Simulator throughput: generated episodes per minute (1 and 2 workers) and eval steps per second.

Run: ``.venv/bin/python bench/sim_bench.py [--episodes N]``. Prints figures; it is not a test.
Wall times include starting worker processes and building environments, as a real run would.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from onshore.eval.runner import evaluate
from onshore.sim.generate import generate

CASES = {
    # env: (tasks, seconds per episode or None for the env's default)
    "metaworld": (["reach-v3", "pick-place-v3", "drawer-open-v3"], None),
    "tep": (["base", "idv-1"], None),
}


def bench_generate(env: str, tasks: list[str], episodes: int, workers: int, seconds: float | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = generate(env, tasks, episodes, 0, Path(tmp) / "out", workers=workers, seconds=seconds)
        wall = time.perf_counter() - t
    print(f"generate {env:9s} workers={workers}: {r.episodes} episodes, {r.frames} frames in "
          f"{wall:6.1f} s -> {60 * r.episodes / wall:7.1f} episodes/min, {r.frames / wall:8.0f} frames/s")


def bench_eval(env: str, tasks: list[str], episodes: int) -> None:
    t = time.perf_counter()
    rep = evaluate(env, tasks, episodes, 0, workers=1)
    wall = time.perf_counter() - t
    steps = sum(e["length"] for task in rep.tasks for e in task.episode_results)
    print(f"eval     {env:9s} workers=1: {steps} control steps in {wall:6.1f} s -> "
          f"{steps / wall:8.0f} steps/s (policy + simulator + scoring)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task")
    args = ap.parse_args()
    for env, (tasks, seconds) in CASES.items():
        for workers in (1, 2):
            bench_generate(env, tasks, args.episodes, workers, seconds)
        bench_eval(env, tasks, args.episodes)


if __name__ == "__main__":
    main()
