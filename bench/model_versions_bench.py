"""Model versions: what resolving NAME / NAME@ALIAS costs, and what a server following an alias
pays per poll, as versions and ledger entries grow.

    .venv/bin/python bench/model_versions_bench.py [--versions V] [--decisions D] [--repeat R]

Builds a real workspace (three sites, two members, one ingested dataset at sakai), releases V
versions of one model name (catalog rows, signed ``model.release`` entries, key wraps: what a
finished training run registers, without the training), points an alias at the first, appends D
recorded decisions (a busy ledger), then times R times: ``versions.resolve`` of ``NAME`` and of
``NAME@ALIAS``, ``models.list_models``, and one poll of ``service.Follow`` when only decisions were
appended since (the common case: no registry read) and when the alias moved (a registry read; the
load of the new version is left out, it is the same load as at start). Prints figures; it is not
a test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import POLICY_JP, build_consortium, write_frames  # noqa: E402
from onshore.errors import OnshoreError  # noqa: E402
from onshore.keys.envelope import new_data_key  # noqa: E402
from onshore.residency.pdp import Request  # noqa: E402
from onshore.serve.service import Follow, Recheck  # noqa: E402
from onshore.workspace import Workspace, datasets, models, versions  # noqa: E402


def _ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=50)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ws = Workspace.init(tmp / "ws", "versions-bench")
        build_consortium(ws, tmp)
        policy = tmp / "p.toml"
        policy.write_text(POLICY_JP)
        datasets.ingest(ws, "furnace", "steelco", "sakai", policy, "furnace-line-3",
                        [write_frames(tmp / "f.parquet")])
        for _ in range(args.versions):
            model = versions.next_id(ws, "plant-base")
            models.release(ws, models.ModelRelease(
                name=model, site="sakai", purpose="fine-tuning", size="tiny", config={}, folder=f"models/{model}",
                files={}, parameters=1, steps=1, world_size=1, metrics={},
                datasets=[{"name": "furnace", "owner": "steelco", "embodiment": "furnace-line-3", "weight": 1.0,
                           "shards": [], "decision_index": 0}]), new_data_key())
        versions.set_alias(ws, "plant-base", "production", 1)
        for _ in range(args.decisions // 100):
            ws.decide_many([Request("site:sakai", "read", "furnace", "sakai", "fine-tuning")] * 100)
        print(f"{args.versions} versions of one name, ledger of {ws.ledger.size()} entries, SQLite, one process")
        for label, fn in (("resolve NAME", lambda: versions.resolve(ws, "plant-base")),
                          ("resolve NAME@ALIAS", lambda: versions.resolve(ws, "plant-base@production")),
                          ("model list (library)", lambda: models.list_models(ws))):
            med, mx = _ms(fn, args.repeat)
            print(f"  {label:<34} median {med:8.2f} ms   max {mx:8.2f} ms")

        def no_load(*_args: object) -> None:
            raise OnshoreError("not loaded in this benchmark")

        logging.getLogger("onshore").setLevel(logging.ERROR)
        follow = Follow(ws, "plant-base@production", "sakai", "fine-tuning", "plant-base",
                        Recheck(ws, None), loader=no_load)  # type: ignore[arg-type]
        follow()  # the first poll reads the registry once

        def quiet_poll() -> None:
            ws.decide_many([Request("site:sakai", "read", "furnace", "sakai", "fine-tuning")])
            t0 = time.perf_counter()
            follow()
            quiet.append((time.perf_counter() - t0) * 1000)

        quiet: list[float] = []
        for _ in range(args.repeat):
            quiet_poll()
        print(f"  {'follow poll, decisions appended':<34} median {statistics.median(quiet):8.2f} ms   "
              f"max {max(quiet):8.2f} ms")
        moved: list[float] = []
        for n in range(args.repeat):
            versions.set_alias(ws, "plant-base", "production", 2 + n % 2)
            follow.current, follow.skipped = "plant-base", None
            t0 = time.perf_counter()
            follow()  # reads the registry and resolves; the load is left out (nothing loaded or recorded)
            moved.append((time.perf_counter() - t0) * 1000)
        print(f"  {'follow poll, alias moved':<34} median {statistics.median(moved):8.2f} ms   "
              f"max {max(moved):8.2f} ms")
        ws.close()


if __name__ == "__main__":
    main()
