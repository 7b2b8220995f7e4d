"""What schema revisions cost: the check every open makes, an upgrade, a backup and a restore.

    PYTHONPATH=$PWD/src:$PWD/tests .venv/bin/python bench/upgrade_bench.py [--repeat 200] [--datasets 20]

Prints (medians, one machine, SQLite):
- ``Workspace.open`` + ``close`` with the revision check and with it replaced by a no-op, interleaved,
  and the check alone (two one-row queries);
- ``onshore upgrade`` of the committed old-workspace fixture (backup included);
- ``backup`` and ``restore`` of a workspace with ``--datasets`` ingested datasets.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import spread  # noqa: E402

from onshore.catalog import migrate  # noqa: E402
from onshore.ledger.log import LEDGER_SCHEMA  # noqa: E402
from onshore.workspace import Workspace  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "old-workspace"


def _open_close(root: Path) -> float:
    t = time.perf_counter()
    Workspace.open(root).close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--datasets", type=int, default=20)
    args = ap.parse_args()
    from conftest import POLICY_JP, build_consortium, write_frames
    from onshore.workspace import datasets
    from onshore.workspace.backup import backup, restore
    from onshore.workspace.upgrade import upgrade

    tmp = Path(tempfile.mkdtemp(prefix="onshore-upgrade-bench-"))
    ws = Workspace.init(tmp / "ws", "bench")
    build_consortium(ws, tmp)
    (tmp / "p.toml").write_text(POLICY_JP)
    frames = write_frames(tmp / "f.parquet", episodes=5, frames=200)
    for i in range(args.datasets):
        datasets.ingest(ws, f"line-{i}", "steelco", "sakai", tmp / "p.toml", "furnace-line-3", [frames])
    ws.close()

    real_check = migrate.check
    with_check: list[float] = []
    without: list[float] = []
    for _ in range(args.repeat):
        with_check.append(_open_close(ws.root))
        migrate.check = lambda engine, line: None  # type: ignore[assignment]
        try:
            without.append(_open_close(ws.root))
        finally:
            migrate.check = real_check
    print(f"Workspace.open+close with the revision check    {spread(with_check, 1e3, '.2f')} ms (min / median / max)")
    print(f"Workspace.open+close without it (no-op)          {spread(without, 1e3, '.2f')} ms")
    opened = Workspace.open(ws.root)
    checks = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        migrate.check(opened.catalog, migrate.CATALOG)
        migrate.check(opened.ledger.engine, LEDGER_SCHEMA)
        checks.append(time.perf_counter() - t)
    opened.close()
    print(f"the check alone (catalog + ledger)               {spread(checks, 1e6, '.0f')} us")

    old = tmp / "old"
    shutil.copytree(FIXTURE, old)
    t = time.perf_counter()
    upgrade(old, tmp / "old-backup")
    print(f"onshore upgrade of the old-workspace fixture     {time.perf_counter() - t:.3f} s (backup included)")

    t = time.perf_counter()
    report = backup(ws.root, tmp / "bk")
    took = time.perf_counter() - t
    print(f"backup, {args.datasets} datasets ({report.files} files, {report.bytes / 1e6:.1f} MB)   {took:.3f} s")
    t = time.perf_counter()
    restore(tmp / "bk", tmp / "restored")
    print(f"restore of that backup                           {time.perf_counter() - t:.3f} s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
