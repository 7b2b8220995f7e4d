"""Many parties: the network's cost beside the embedded default, side by side in one run.

    .venv/bin/python bench/parties_bench.py [--frames 1000000] [--repeat 3] [--decisions 300]

- upload: a member streams a Parquet file to a site node over Arrow Flight with mutual TLS
  (``onshore party ingest``: consent + decision at the coordinator, stream digest, encrypted
  shards at the site, the site's signed entry) against today's local ``dataset ingest``
  (``datasets.ingest`` in a workspace: read, validate, encrypt, catalog, ledger), interleaved, in
  this process. Goal (issue 19): upload >= 0.7x the local ingest's frames/s on loopback. The
  site node does not validate telemetry (the local ingest does): that work is not in its figure.
- copy: site to site (Tokyo pulls from Sakai: the shards' encrypted bytes and the key sealed to Tokyo's node),
  MB/s of the source Parquet's size and frames/s.
- decision round trip: a site's signed request to the coordinator and the signed decision back
  (HTTPS, mutual TLS, Cedar, a ledger append), p50 / p99 over ``--decisions`` calls.
Every figure is min / median / max over the repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from residency_bench import frames  # noqa: E402


def spread(xs: list[float]) -> str:
    return f"{min(xs):,.0f} / {statistics.median(xs):,.0f} / {max(xs):,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decisions", type=int, default=300)
    args = ap.parse_args()

    from conftest import POLICY_JP, build_consortium
    from onshore.parties import actions
    from onshore.parties.client import CoordinatorClient
    from onshore.parties.local import LocalConsortium
    from onshore.workspace import Workspace, datasets

    tmp = Path(tempfile.mkdtemp(prefix="parties-bench-"))
    src = tmp / "frames.parquet"
    pq.write_table(frames(args.frames), src, compression="zstd")
    mb = src.stat().st_size / 1e6
    (tmp / "p.toml").write_text(POLICY_JP)
    ws = build_consortium(Workspace.init(tmp / "ws", "bench"), tmp)
    dep = LocalConsortium.provision(tmp / "dep")
    dep.start("coordinator:coordinator")
    dep.start("site:sakai")
    dep.start("site:tokyo")
    member, tokyo = dep.kit("member:kansai-robotics"), dep.kit("site:tokyo")
    local, upload, copy_mb, copy_fps = [], [], [], []
    try:
        for i in range(args.repeat):
            t = time.perf_counter()
            datasets.ingest(ws, f"local{i}", "steelco", "sakai", tmp / "p.toml", "furnace-line-3", [src])
            local.append(args.frames / (time.perf_counter() - t))
            t = time.perf_counter()
            actions.ingest(member, f"up{i}", [src], "sakai", tmp / "p.toml")
            upload.append(args.frames / (time.perf_counter() - t))
            t = time.perf_counter()
            actions.copy(tokyo, f"up{i}", "sakai")
            s = time.perf_counter() - t
            copy_mb.append(mb / s)
            copy_fps.append(args.frames / s)
        co = CoordinatorClient(tokyo)
        rtt = []
        for _ in range(args.decisions):
            t = time.perf_counter()
            co.decide("read", "up0", "tokyo")
            rtt.append((time.perf_counter() - t) * 1000)
    finally:
        dep.stop()
        ws.close()
    rtt.sort()
    ratio = statistics.median(upload) / statistics.median(local)
    print(f"frames {args.frames:,} ({mb:.1f} MB Parquet), {args.repeat} repetitions, min / median / max")
    print(f"  local dataset ingest        {spread(local)} frames/s")
    print(f"  Flight + mTLS upload        {spread(upload)} frames/s   ({ratio:.2f}x local; goal >= 0.7x)")
    print(f"  site-to-site copy           {spread(copy_mb)} MB/s   ({spread(copy_fps)} frames/s)")
    print(f"  decision round trip         p50 {rtt[len(rtt) // 2]:.1f} ms, p99 {rtt[int(len(rtt) * 0.99) - 1]:.1f} ms "
          f"over {len(rtt)}")


if __name__ == "__main__":
    main()
