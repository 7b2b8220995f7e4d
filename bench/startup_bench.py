"""How long a command takes to answer, as a person runs it: a fresh process each time.

    .venv/bin/python bench/startup_bench.py [--repeat 10] [--tree PATH --tree PATH ...]

Builds one workspace (SQLite; three sites, two members, an embodiment, one ingested dataset and
one registered model version: the registry rows and ledger entries a finished training run
leaves, without the training), then times ``onshore --help`` and the four listing commands
(``site list``, ``dataset list``, ``model list``, ``ledger log``), the console script each run in
a new process, interleaved with a bare ``python -c pass``; prints min / median / max seconds.
Each ``--tree`` (a source checkout, e.g. one of main made with ``git archive main``) is timed
with its ``src`` first on ``PYTHONPATH``, all trees in the same rounds so that load falls on each
alike; without ``--tree``, the tree this script is in. The workspace is made by this tree's
code. Goal (issue 22): each command at most 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _stats import interleaved, spread  # noqa: E402

from conftest import POLICY_JP, build_consortium, write_frames  # noqa: E402

COMMANDS = {"--help": ["--help"], "site list": ["site", "list"], "dataset list": ["dataset", "list"],
            "model list": ["model", "list"], "ledger log": ["ledger", "log"]}


def make_workspace(tmp: Path) -> Path:
    """The workspace every tree lists: a few of everything, made through the library."""
    from onshore.keys.envelope import new_data_key
    from onshore.workspace import Workspace, datasets, models, versions

    with Workspace.init(tmp / "ws", "startup-bench") as ws:
        build_consortium(ws, tmp)
        policy = tmp / "policy.toml"
        policy.write_text(POLICY_JP)
        datasets.ingest(ws, "furnace", "steelco", "sakai", policy, "furnace-line-3",
                        [write_frames(tmp / "furnace.parquet")])
        model = versions.next_id(ws, "plant-base")
        models.release(ws, models.ModelRelease(
            name=model, site="sakai", purpose="fine-tuning", size="tiny", config={}, folder=f"models/{model}",
            files={}, parameters=1, steps=1, world_size=1, metrics={},
            datasets=[{"name": "furnace", "owner": "steelco", "embodiment": "furnace-line-3", "weight": 1.0,
                       "shards": [], "decision_index": 0}]), new_data_key())
        return ws.root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--tree", action="append", type=Path, default=[],
                    help="A source tree to time (repeatable); default: this one.")
    args = ap.parse_args()
    trees = [t.resolve() for t in args.tree] or [HERE.parent]
    for t in trees:
        if not (t / "src" / "onshore" / "cli" / "app.py").is_file():
            sys.exit(f"--tree {t}: no src/onshore/cli/app.py there; give a checkout of this repository")
    exe = shutil.which("onshore") or str(Path(sys.executable).parent / "onshore")
    tmp = Path(tempfile.mkdtemp(prefix="onshore-startup-"))
    try:
        ws = make_workspace(tmp)

        def case(tree: Path, argv: list[str]) -> Callable[[], None]:
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            full = argv if argv == ["--help"] else ["-w", str(ws), *argv]
            return lambda: subprocess.run([exe, *full], check=True, capture_output=True, env=env) and None

        cases = {f"{i} {name}": case(t, argv) for name, argv in COMMANDS.items() for i, t in enumerate(trees)}
        cases["python -c pass"] = lambda: subprocess.run([sys.executable, "-c", "pass"], check=True) and None
        times = interleaved(cases, args.repeat)  # type: ignore[arg-type]
        print(f"repeat {args.repeat}, interleaved, fresh process each (console script {exe}); "
              f"seconds min / median / max; goal <= 0.3 s each")
        for i, t in enumerate(trees):
            print(f"tree {i + 1}: {t}")
        print(f"{'command':16s}" + "".join(f"  {'tree ' + str(i + 1):>22s}" for i in range(len(trees))))
        for name in COMMANDS:
            print(f"{name:16s}" + "".join(f"  {spread(times[f'{i} {name}'], fmt='.3f'):>22s}"
                                          for i in range(len(trees))))
        print(f"{'python -c pass':16s}  {spread(times['python -c pass'], fmt='.3f'):>22s}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
