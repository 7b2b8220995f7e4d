"""Where the time of one ``onshore eval`` goes: which process ran which episode, when (issue 22).

Runs the CLI's ``eval`` in this process with each episode and each worker's warm-up timed
(wrapping ``onshore.eval.runner._job`` and ``_warm``; nothing else changes), then prints, from
the start of this process: when the evaluation was set up and run, when each worker process
finished warming up, and per process its episodes in the order it ran them, its first start,
last end and busy seconds. Use it beside ``eval_bench.py`` to see start-up cost and the
balance at the end; its own figures include the small cost of the timing.

Usage: .venv/bin/python bench/eval_timeline.py --workspace DIR [--workers 2] [-- more eval options]
(DIR: a workspace ``eval_bench.py`` built; it prints its path.)
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

T0 = time.time()

from onshore.eval import runner  # noqa: E402 (T0 first: the import is part of the start)

_run, _warm = runner._run, runner._warm


def _log(line: str) -> None:
    with open(os.environ["EVAL_TIMELINE_LOG"], "a") as f:
        f.write(f"{time.time():.3f} {os.getpid()} {line}\n")


def timed_job(job: tuple[Any, Any, Any]) -> dict[str, Any]:
    t = time.time()
    result = _run(*job)
    _log(f"ep {job[0].task}:{job[0].index} {t:.3f}")
    return result


def timed_warm(specs: Sequence[Any]) -> None:
    t = time.time()
    _warm(specs)
    _log(f"warm {t:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--workers", default="2")
    ap.add_argument("--tasks", default="reach-v3,push-v3")
    ap.add_argument("--episodes", default="25")
    ap.add_argument("rest", nargs="*", help="more `onshore eval` options (after --)")
    args = ap.parse_args()
    log = os.path.join(tempfile.mkdtemp(prefix="onshore-eval-timeline-"), "log")
    os.environ["EVAL_TIMELINE_LOG"] = log  # before the forkserver starts: its processes inherit it
    os.environ["ONSHORE_WORKSPACE"] = args.workspace
    # the worker processes get these by name: __main__ is this script there too (forkserver preload)
    runner._job, runner._warm = timed_job, timed_warm  # type: ignore[assignment]
    for name in ("__init__", "run"):
        def wrapped(self: Any, *a: Any, __f: Any = getattr(runner.Evaluation, name), __n: str = name,
                    **k: Any) -> Any:
            _log(f"{__n}-start")
            try:
                return __f(self, *a, **k)
            finally:
                _log(f"{__n}-end")
        setattr(runner.Evaluation, name, wrapped)
    from onshore.cli.app import main as cli

    sys.argv = ["onshore", "eval", "--env", "metaworld", "--tasks", args.tasks, "--episodes", args.episodes,
                "--seed", "0", "--policy", "arm-model", "--site", "sakai", "--workers", args.workers, "--json",
                *args.rest]
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # the report itself is eval_bench's business
    try:
        cli()
    except SystemExit as e:
        if e.code:
            raise
    finally:
        sys.stdout = real_stdout
    end = time.time()
    episodes: dict[str, list[tuple[float, float, str]]] = collections.defaultdict(list)
    with open(log) as f:
        for line in f:
            at, pid, what, *rest = line.split()
            if what == "ep":
                episodes[pid].append((float(rest[1]) - T0, float(at) - T0, rest[0]))
            elif what == "warm":
                print(f"{float(at) - T0:7.2f} s  process {pid}: warmed up (took {float(at) - float(rest[0]):.2f} s)")
            else:
                print(f"{float(at) - T0:7.2f} s  process {pid}: Evaluation.{what}")
    for pid, eps in episodes.items():
        eps.sort()
        busy = sum(b - a for a, b, _ in eps)
        print(f"process {pid}{' (this one)' if int(pid) == os.getpid() else ''}: {len(eps)} episodes from "
              f"{eps[0][0]:.2f} s to {eps[-1][1]:.2f} s, busy {busy:.1f} s: {' '.join(n for *_, n in eps)}")
    print(f"wall {end - T0:.2f} s (from the start of this process); "
          f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
