"""How long a command takes to answer, as a person runs it: a fresh process each time.

    .venv/bin/python bench/startup_bench.py [--repeat 10]

Times ``onshore --help`` and ``onshore site list`` (in a workspace with three sites), the
console script each run in a new process, interleaved; prints min / median / max. Goal
(issue 12): both under 0.3 s.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import interleaved, spread  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    exe = shutil.which("onshore") or str(Path(sys.executable).parent / "onshore")
    tmp = Path(tempfile.mkdtemp(prefix="onshore-startup-"))
    ws = tmp / "ws"
    subprocess.run([exe, "init", str(ws), "--name", "startup"], check=True, capture_output=True)
    for name, jur in (("sakai", "JP"), ("tokyo", "JP"), ("ohio", "US")):
        subprocess.run([exe, "-w", str(ws), "site", "add", name, "--jurisdiction", jur, "--roles", "storage"],
                       check=True, capture_output=True)

    def run(*argv: str) -> None:
        subprocess.run([exe, *argv], check=True, capture_output=True)

    def run_python() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    times = interleaved({"onshore --help": lambda: run("--help"),
                         "onshore site list": lambda: run("-w", str(ws), "site", "list"),
                         "python -c pass": lambda: run_python()},
                        args.repeat)
    print(f"repeat {args.repeat}, interleaved, fresh process each; seconds min / median / max")
    for name, t in times.items():
        goal = "   (goal < 0.3 s)" if name.startswith("onshore") else "   (the interpreter alone)"
        print(f"{name:20s} {spread(t, fmt='.3f')}{goal}")


if __name__ == "__main__":
    main()
