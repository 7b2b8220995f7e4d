"""Residency core figures, measured side by side in one run.

    .venv/bin/python bench/residency_bench.py [--frames N] [--repeat R]

Prints: encrypted shard write vs plain pyarrow.parquet.write_table of the same frames (frames/s,
MB/s of Arrow data), full `dataset ingest` (validation + encryption + catalog + ledger), read at an
allowed site vs a plain read, and policy decisions per second on one core (raw Cedar with parsed
policy and entity handles, and the PDP's memoised decisions). Goals (issue 2): encrypted >= 0.8x
plain, read >= 0.9x plain, cached decisions >= 20,000/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import EMBODIMENT_TOML, POLICY_JP, build_consortium  # noqa: E402
from onshore.residency.pdp import PolicyDecisionPoint, Request  # noqa: E402
from onshore.store import shards as S  # noqa: E402
from onshore.workspace import Workspace, datasets  # noqa: E402


def frames(n: int, state_dim: int, action_dim: int) -> pa.Table:
    rng = np.random.default_rng(0)
    per_ep = 500
    state = rng.normal(size=(n, state_dim)).astype(np.float32)
    action = rng.normal(size=(n, action_dim)).astype(np.float32)
    return pa.table({
        "episode_index": (np.arange(n) // per_ep).astype(np.int64),
        "frame_index": (np.arange(n) % per_ep).astype(np.int64),
        "timestamp": (np.arange(n) % per_ep) / 10.0,
        "observation.state": pa.FixedSizeListArray.from_arrays(state.ravel(), state_dim).cast(pa.list_(pa.float32())),
        "action": pa.FixedSizeListArray.from_arrays(action.ravel(), action_dim).cast(pa.list_(pa.float32())),
    })


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.sched_setaffinity(0, {0}) if hasattr(os, "sched_setaffinity") else None

    tmp = Path(tempfile.mkdtemp(prefix="onshore-bench-"))
    table = frames(args.frames, 3, 2)
    mb = table.nbytes / 1e6
    key = os.urandom(32)
    print(f"frames: {args.frames:,} ({mb:.1f} MB as Arrow), 3 state + 2 action channels; one core; best of "
          f"{args.repeat}")

    def plain_write() -> None:
        pq.write_table(table, tmp / "plain.parquet", row_group_size=S.ROW_GROUP_ROWS, compression="zstd")

    def enc_write() -> None:
        info = S.write_shard(table, tmp / "site", "bench", key)
        (tmp / "site" / info.path).unlink()

    t_plain = best(plain_write, args.repeat)
    t_enc = best(enc_write, args.repeat)
    print(f"write  plain      {args.frames / t_plain:12,.0f} frames/s {mb / t_plain:8.1f} MB/s")
    print(f"write  encrypted  {args.frames / t_enc:12,.0f} frames/s {mb / t_enc:8.1f} MB/s   "
          f"ratio {t_plain / t_enc:.2f}x (goal >= 0.8x)")

    ws = build_consortium(Workspace.init(tmp / "ws", "bench"), tmp)
    (tmp / "emb.toml").write_text(EMBODIMENT_TOML)
    policy = tmp / "p.toml"
    policy.write_text(POLICY_JP)
    plain_write()
    counter = iter(range(1000))

    def ingest() -> None:
        datasets.ingest(ws, f"d{next(counter)}", "steelco", "sakai", policy, "furnace-line-3",
                        [tmp / "plain.parquet"])

    t_ing = best(ingest, args.repeat)
    print(f"ingest (validate + encrypt + catalog + ledger) {args.frames / t_ing:12,.0f} frames/s "
          f"{mb / t_ing:8.1f} MB/s   ratio to plain write {t_plain / t_ing:.2f}x")

    t_pread = best(lambda: pq.read_table(tmp / "plain.parquet"), args.repeat)
    t_eread = best(lambda: datasets.read(ws, "d0", "sakai"), args.repeat)
    info = S.write_shard(table, tmp / "site", "bench", key)
    t_dread = best(lambda: S.read_shard(tmp / "site", info.path, info.sha256, info.salt, "bench", key), args.repeat)
    print(f"read   plain      {args.frames / t_pread:12,.0f} frames/s {mb / t_pread:8.1f} MB/s")
    print(f"read   shard only {args.frames / t_dread:12,.0f} frames/s {mb / t_dread:8.1f} MB/s   "
          f"ratio {t_pread / t_dread:.2f}x (decrypt + authenticate)")
    print(f"read   at site    {args.frames / t_eread:12,.0f} frames/s {mb / t_eread:8.1f} MB/s   "
          f"ratio {t_pread / t_eread:.2f}x (goal >= 0.9x; adds the decision, key release and 2 ledger appends)")

    pdp = ws.pdp()
    assert isinstance(pdp, PolicyDecisionPoint)
    today = dt.date(2026, 11, 29)
    reqs = [Request(f"site:{s}", a, f"d{i % 3}", s, p, today)
            for i, (s, a, p) in enumerate([(s, a, p) for s in ("sakai", "tokyo", "ohio")
                                           for a in ("read", "copy", "train") for p in (None, "fine-tuning")])]
    n = 2000
    fresh = PolicyDecisionPoint(pdp.policy_text, ws.site_facts(), cache_size=1)
    t = time.perf_counter()
    for i in range(n):
        fresh.decide(reqs[i % len(reqs)])
    raw = n / (time.perf_counter() - t)
    n = 200_000
    t = time.perf_counter()
    for i in range(n):
        pdp.decide(reqs[i % len(reqs)])
    cached = n / (time.perf_counter() - t)
    print(f"decisions  Cedar (parsed policy + entity handles) {raw:12,.0f}/s")
    print(f"decisions  cached                                 {cached:12,.0f}/s (goal >= 20,000/s)")
    ws.close()


if __name__ == "__main__":
    main()
