"""Residency core: what `onshore dataset ingest` and `dataset read` cost beside the plain work.

    .venv/bin/python bench/residency_bench.py [--frames 500000,2000000] [--repeat 3]

Ingest is the CLI's library call (``datasets.ingest``: read, validate, encrypt, fsync, SHA-256,
catalog, ledger), each run in a fresh process as a person pays for it. Its baseline does the
same durable work on the same file without Onshore: ``pq.read_table`` + zstd ``pq.write_table``
with the same row groups + fsync + SHA-256 of the output, also in a fresh process. The two are
interleaved (baseline, ingest, baseline, ingest...) so load on a shared machine falls on both.
Peak RSS is each child's own high-water mark (VmHWM). Read compares ``datasets.read`` at an allowed site with
``pq.read_table`` of the plain file, interleaved in this process. Decisions are Cedar
evaluations, each request distinct (no memo); memoised repeats are printed apart. Every figure
is min / median / max over the repetitions. Goals (issue 12): ingest >= 0.8x the baseline's
throughput; ingest peak RSS <= 1.2x the baseline's and flat from 500k to 5M frames.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _stats import interleaved, rate_spread, spread  # noqa: E402


def frames(n: int, state_dim: int = 3, action_dim: int = 2) -> pa.Table:
    """Frames inside the limits of the test embodiment (furnace-line-3), 500 per episode."""
    rng = np.random.default_rng(0)
    per_ep = 500
    state = rng.uniform(0, 25, size=(n, state_dim)).astype(np.float32)
    action = rng.uniform(0, 100, size=(n, action_dim)).astype(np.float32)
    return pa.table({
        "episode_index": (np.arange(n) // per_ep).astype(np.int64),
        "frame_index": (np.arange(n) % per_ep).astype(np.int64),
        "timestamp": (np.arange(n) % per_ep) / 10.0,
        "observation.state": pa.FixedSizeListArray.from_arrays(state.ravel(), state_dim).cast(pa.list_(pa.float32())),
        "action": pa.FixedSizeListArray.from_arrays(action.ravel(), action_dim).cast(pa.list_(pa.float32())),
    })


def child(mode: str, src: Path, ws_path: Path, name: str) -> None:
    """One measured run in this (fresh) process; prints seconds and peak RSS as JSON."""
    if mode == "baseline":
        from onshore.store.shards import ROW_GROUP_ROWS
        t = time.perf_counter()
        out = ws_path.parent / f"{name}.parquet"
        pq.write_table(pq.read_table(src), out, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
        h = hashlib.sha256()
        with open(out, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        seconds = time.perf_counter() - t
        out.unlink()
    else:
        from onshore.workspace import Workspace, datasets
        with Workspace.open(ws_path) as ws:
            t = time.perf_counter()
            datasets.ingest(ws, name, "steelco", "sakai", ws_path.parent / "p.toml", "furnace-line-3", [src])
            seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux carries that over from the
    parent across fork and exec, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="500000,2000000", help="comma-separated sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", nargs=4, metavar=("MODE", "SRC", "WS", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, src, ws, name = args.child
        child(mode, Path(src), Path(ws), name)
        return

    from conftest import EMBODIMENT_TOML, POLICY_JP, build_consortium
    from onshore.residency.pdp import PolicyDecisionPoint, Request
    from onshore.workspace import Workspace, datasets

    tmp = Path(tempfile.mkdtemp(prefix="onshore-bench-"))
    (tmp / "emb.toml").write_text(EMBODIMENT_TOML)
    (tmp / "p.toml").write_text(POLICY_JP)
    ws = build_consortium(Workspace.init(tmp / "ws", "bench"), tmp)
    ws.close()
    print(f"{os.cpu_count()} cores (shared), repeat {args.repeat}, interleaved; figures are min / median / max")
    names = iter(range(10_000))
    rss: dict[int, tuple[list[float], list[float]]] = {}
    for n in (int(x) for x in args.frames.split(",")):
        src = tmp / f"in-{n}.parquet"
        pq.write_table(frames(n), src, row_group_size=65536)  # the table is freed before any child runs
        mb = src.stat().st_size / 1e6
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "ingest": []}

        def run(mode: str, src: Path = src, runs: dict[str, list[dict[str, float]]] = runs) -> float:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(tmp / "ws"),
                                  f"d{next(names)}"], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(r)
            return float(r["seconds"])

        t = interleaved({"baseline": lambda: run("baseline"), "ingest": lambda: run("ingest")}, args.repeat)
        ratio = [b / i for b, i in zip(t["baseline"], t["ingest"], strict=True)]
        rss_b = [r["rss_mb"] for r in runs["baseline"]]
        rss_i = [r["rss_mb"] for r in runs["ingest"]]
        rss[n] = (rss_b, rss_i)
        print(f"\n{n:,} frames ({mb:.1f} MB Parquet on disk)")
        print(f"  baseline read+zstd write+fsync+sha256  {rate_spread(n, t['baseline'])} frames/s")
        print(f"  dataset ingest (library call)          {rate_spread(n, t['ingest'])} frames/s")
        print(f"  ingest / baseline throughput           {spread(ratio, fmt='.2f')}x   (goal >= 0.8x)")
        print(f"  peak RSS baseline                      {spread(rss_b)} MB")
        print(f"  peak RSS ingest                        {spread(rss_i)} MB")
        rss_ratio = [i / b for b, i in zip(rss_b, rss_i, strict=True)]
        print(f"  ingest / baseline peak RSS             {spread(rss_ratio, fmt='.2f')}x   (goal <= 1.2x)")

        # the read's baseline is the same frames in the shards' own codec and row groups (zstd,
        # ROW_GROUP_ROWS), unencrypted; the input file (snappy, pyarrow's default) is shown beside it
        from onshore.store.shards import ROW_GROUP_ROWS
        same_codec = tmp / f"zstd-{n}.parquet"
        pq.write_table(pq.read_table(src), same_codec, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        with Workspace.open(tmp / "ws") as ws:
            last = datasets.list_datasets(ws)[-1]["name"]
            rt = interleaved({"zstd": lambda f=same_codec: pq.read_table(f) and None,
                              "snappy": lambda src=src: pq.read_table(src) and None,
                              "site": lambda last=last: datasets.read(ws, last, "sakai") and None}, args.repeat)
        print(f"  read plain zstd file, pq.read_table    {rate_spread(n, rt['zstd'])} frames/s")
        print(f"  read plain snappy file, pq.read_table  {rate_spread(n, rt['snappy'])} frames/s")
        print(f"  read at an allowed site (zstd shards)  {rate_spread(n, rt['site'])} frames/s   ratio to zstd "
              f"{spread([p / s for p, s in zip(rt['zstd'], rt['site'], strict=True)], fmt='.2f')}x (goal >= 0.9x), "
              f"to snappy {spread([p / s for p, s in zip(rt['snappy'], rt['site'], strict=True)], fmt='.2f')}x")
        same_codec.unlink()
    if len(rss) > 1:
        sizes = sorted(rss)
        med = {n: sorted(rss[n][1])[len(rss[n][1]) // 2] for n in sizes}
        print("\ningest peak RSS (median) by size: " + ", ".join(f"{n:,}: {med[n]:.0f} MB" for n in sizes)
              + f"; growth {med[sizes[-1]] / med[sizes[0]]:.2f}x (goal: flat)")

    with Workspace.open(tmp / "ws") as ws:
        pdp = ws.pdp()
        today = dt.date(2026, 11, 29)
        # distinct requests: the memo never answers, every decision is a Cedar evaluation
        reqs = [Request(f"site:{s}", a, f"d{i}", s, p, today) for i in range(100)
                for s in ("sakai", "tokyo", "ohio") for a in ("read", "copy", "train") for p in (None, "fine-tuning")]
        fresh = PolicyDecisionPoint(pdp.policy_text, ws.site_facts(), cache_size=1)
        k = 600
        d = interleaved({"cedar": lambda: [fresh.decide(r) for r in reqs[:k]] and None}, args.repeat)
        same = reqs[:18]
        m = interleaved({"memo": lambda: [pdp.decide(same[i % 18]) for i in range(100_000)] and None}, args.repeat)
    print(f"decisions, each a Cedar evaluation       {rate_spread(k, d['cedar'])}/s")
    print(f"decisions repeated (memoised)            {rate_spread(100_000, m['memo'])}/s")


if __name__ == "__main__":
    main()
