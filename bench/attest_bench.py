"""Residency bundles: time to attest and to verify a dataset whose claim cites about 1,000 entries.

    .venv/bin/python bench/attest_bench.py [--reads N] [--repeat R]

Builds a real workspace (three sites, one member), ingests a small dataset at sakai, copies it to
tokyo, then opens it for reading N times at alternating sites; each read records an allow decision
and a key release, so the claim cites about 2N + 8 entries. After a checkpoint cosigned by two
witnesses it attests the dataset and times ``verify_bundle`` (offline: bundle bytes and the trust
root only) R times, pinned to one core. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import POLICY_JP, build_consortium, cosign_with_witnesses, write_frames  # noqa: E402
from onshore.attest.bundle import attest_dataset  # noqa: E402
from onshore.attest.trust import build_trust_root  # noqa: E402
from onshore.attest.verify import verify_bundle  # noqa: E402
from onshore.workspace import Workspace  # noqa: E402
from onshore.workspace import datasets as D  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=496, help="reads to record (2 entries each)")
    ap.add_argument("--repeat", type=int, default=20, help="verify runs to time")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="onshore-attest-bench-"))
    with Workspace.init(tmp / "ws", "attest-bench") as ws:
        build_consortium(ws, tmp)
        (tmp / "policy.toml").write_text(POLICY_JP)
        D.ingest(ws, "furnace", "steelco", "sakai", tmp / "policy.toml", "furnace-line-3",
                 [write_frames(tmp / "f.parquet")])
        D.copy(ws, "furnace", "tokyo")
        t = time.perf_counter()
        for i in range(args.reads):
            # Opening for reading decides and releases the key up front; no shard is decrypted.
            D.iter_batches(ws, "furnace", ("sakai", "tokyo")[i % 2], "fine-tuning")
        setup = time.perf_counter() - t
        cosign_with_witnesses(ws, tmp)
        trust = build_trust_root(ws)
        t = time.perf_counter()
        bundle = attest_dataset(ws, "furnace")
        attest_s = time.perf_counter() - t
        ledger_size = ws.ledger.size()
    raw = json.dumps(bundle, indent=2).encode()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        report = verify_bundle(raw, trust, min_witnesses=2)
        times.append(time.perf_counter() - t)
        assert report.ok, report.failed
    n = len(bundle["entries"])
    print(f"workspace: {ledger_size} ledger entries ({args.reads} reads recorded in {setup:.1f} s)")
    print(f"attest:    {n} cited entries, bundle {len(raw) / 1024:.0f} KiB, {attest_s * 1000:.0f} ms")
    print(f"verify:    median {statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms over "
          f"{args.repeat} runs ({n / statistics.median(times):,.0f} entries/s; one core, K=2 witnesses)")
    print(f"command:   .venv/bin/python bench/attest_bench.py --reads {args.reads} --repeat {args.repeat}")


if __name__ == "__main__":
    main()
