"""Dashboard page render times on a big workspace: 1,000 datasets and 100,000 ledger entries.

    .venv/bin/python bench/dashboard_bench.py [--datasets 1000] [--entries 100000] [--repeat 5] [--no-verify]

How the workspace is built (fast, and stated so the figures can be judged): sites, members and an
embodiment through the library (``registry``); ONE dataset ingested for real (``datasets.ingest``,
encrypted shards, grant and decision entries); the other datasets as catalog rows inserted in one
transaction (``datasets`` and ``shards`` tables, each with a valid policy TOML and hash, shards
spread over the sites: the catalog a workspace with that many ingests would hold, without the
files), each with its ``consent.grant`` signed by its owner (pages refuse a row no grant
registers); then the ledger is filled to the asked size with signed ``decision`` entries about those
datasets (one in ten a refusal at the US site), appended through ``Ledger.append`` in batches of
5,000 as drafts (the ledger's own batch path: signed in the append transaction with their subject
links, real Merkle nodes, the subject index filled), their times spread over
the last 30 days. Each page is then fetched through Starlette's TestClient (HTML and JSON), the
first fetch discarded (template compile), min / median / max of the rest printed. Goal (issue 13):
under 300 ms per page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert

from onshore.catalog import schema as T
from onshore.catalog.db import write_transaction
from onshore.ledger.entries import Draft
from onshore.residency.policy import cedar_hash, dataset_cedar, parse_policy
from onshore.workspace import Workspace, datasets, registry

EMBODIMENT = """name = "furnace"
control_hz = 10
[[state]]
name = "t"
unit = "degC"
low = 0.0
high = 1400.0
[[action]]
name = "v"
unit = "percent"
low = 0.0
high = 100.0
max_rate = 5.0
"""
POLICY = """jurisdictions = ["JP"]
sites = []
purposes = ["foundation-pretraining", "fine-tuning"]
expires = 2031-03-31
derived_models = "stop-serving"
"""
SITES = (("sakai", "JP"), ("tokyo", "JP"), ("osaka", "JP"), ("ohio", "US"))


def frames(n: int = 200) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({
        "episode_index": np.repeat(np.arange(2), n // 2).astype(np.int64),
        "frame_index": np.tile(np.arange(n // 2), 2).astype(np.int64),
        "timestamp": np.tile(np.arange(n // 2) / 10.0, 2),
        "observation.state": pa.array(rng.uniform(0, 25, (n, 1)).astype(np.float32).tolist(), pa.list_(pa.float32())),
        "action": pa.array(rng.uniform(0, 100, (n, 1)).astype(np.float32).tolist(), pa.list_(pa.float32())),
        "task": pa.array(["hold"] * n),
        "next.reward": np.zeros(n, dtype=np.float32),
        "next.done": np.tile(np.arange(n // 2) == n // 2 - 1, 2),
    })


def build(root: Path, n_datasets: int, n_entries: int) -> tuple[Workspace, dict[str, float]]:
    took: dict[str, float] = {}
    t = time.perf_counter()
    ws = Workspace.init(root / "ws", "bench-consortium")
    for name, code in SITES:
        registry.add_site(ws, name, code, "storage,compute,serve")
    for m in ("steelco", "autoco"):
        registry.add_member(ws, m)
    (root / "emb.toml").write_text(EMBODIMENT)
    registry.add_embodiment(ws, root / "emb.toml")
    (root / "policy.toml").write_text(POLICY)
    pq.write_table(frames(), root / "f.parquet")
    datasets.ingest(ws, "real-0000", "steelco", "sakai", root / "policy.toml", "furnace", [root / "f.parquet"])
    took["real ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    created = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
    policy_hash = hashlib.sha256(POLICY.encode()).hexdigest()
    rows, shards = [], []
    for i in range(1, n_datasets):
        name = f"line-{i:04d}"
        rows.append({"name": name, "owner": ("steelco", "autoco")[i % 2], "embodiment": "furnace", "policy": POLICY,
                     "policy_hash": policy_hash, "status": "active", "episodes": 4, "frames": 400,
                     "created_at": created, "withdrawn_at": None})
        for j, (site, _) in enumerate(SITES[:3][: 1 + i % 3]):
            shards.append({"dataset": name, "site": site, "sha256": hashlib.sha256(f"{name}/{j}".encode()).hexdigest(),
                           "path": f"datasets/{name}/shard-{j}.parquet", "salt": "00" * 16, "bytes": 40_000,
                           "frames": 400, "created_at": created})
    with write_transaction(ws.catalog, "the catalog") as conn:
        conn.execute(insert(T.datasets), rows)
        conn.execute(insert(T.shards), shards)
    # each catalog row's consent.grant, signed by its owner: pages refuse a dataset row that no
    # signed grant registers (rules come from the ledger)
    policy = parse_policy(POLICY, "bench policy")
    owners = {m: ws.signer(f"member:{m}") for m in ("steelco", "autoco")}
    ws.ledger.append([Draft("consent.grant", f"member:{r['owner']}", {
        "dataset": r["name"], "owner": r["owner"], "policy": policy.to_json(), "policy_hash": policy.hash,
        "cedar_hash": cedar_hash(dataset_cedar(r["name"], r["owner"], policy, withdrawn=False))},
        owners[r["owner"]]) for r in rows])
    took["catalog rows and grants"] = time.perf_counter() - t

    t = time.perf_counter()
    rng = random.Random(1)
    todo = n_entries - ws.ledger.size()
    start = now - dt.timedelta(days=30)
    step = dt.timedelta(days=30) / max(todo, 1)
    signers = {f"site:{s}": ws.signer(f"site:{s}") for s, _ in SITES}
    batch = []
    for k in range(todo):
        name = f"line-{rng.randrange(1, n_datasets):04d}"
        deny = k % 10 == 0
        site = "ohio" if deny else rng.choice(("sakai", "tokyo", "osaka"))
        body = {"request": {"principal": f"site:{site}", "action": rng.choice(("read", "copy", "train")),
                            "dataset": name, "site": site, "purpose": "fine-tuning", "today": now.date().isoformat()},
                "decision": "deny" if deny else "allow",
                "rules": [f"dataset/{name}/jurisdictions"] if deny else [f"dataset/{name}/grant"],
                "policy_hash": policy_hash, "dataset_policy_hash": policy_hash,
                "site_jurisdiction": "US" if deny else "JP"}
        when = (start + step * k).isoformat(timespec="microseconds").replace("+00:00", "Z")
        batch.append(Draft("decision", f"site:{site}", body, signers[f"site:{site}"], time=when))
        if len(batch) == 5000:
            ws.ledger.append(batch)
            batch = []
    if batch:
        ws.ledger.append(batch)
    ws.make_checkpoint()
    took["ledger entries"] = time.perf_counter() - t
    return ws, took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=1000)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the background full verification (minutes on 100,000 entries)")
    args = ap.parse_args()
    from starlette.testclient import TestClient

    from onshore.web.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        ws, took = build(Path(tmp), args.datasets, args.entries)
        print(f"workspace: {args.datasets} datasets, {ws.ledger.size()} ledger entries; built in "
              + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
        app = create_app(ws.root)
        pages = [("overview", "/"), ("dataset (real)", "/datasets/real-0000"),
                 ("dataset (catalog row)", "/datasets/line-0500"), ("ledger", "/ledger"),
                 ("ledger filtered dataset", "/ledger?dataset=line-0500"),
                 ("ledger filtered kind+actor", "/ledger?kind=decision&actor=site:ohio"),
                 ("verify (form)", "/verify")]
        worst = 0.0
        with TestClient(app, base_url="http://127.0.0.1") as c:
            print(f"{'page':<28} {'fmt':<5} {'min ms':>8} {'median':>8} {'max':>8}")
            for label, url in pages:
                for fmt in ("html", "json"):
                    u = url + (("&" if "?" in url else "?") + "format=json" if fmt == "json" else "")
                    times = []
                    for _ in range(args.repeat + 1):
                        t = time.perf_counter()
                        r = c.get(u)
                        times.append((time.perf_counter() - t) * 1000)
                        assert r.status_code == 200, (u, r.status_code, r.text[:300])
                    times = times[1:]
                    worst = max(worst, statistics.median(times))
                    print(f"{label:<28} {fmt:<5} {min(times):8.1f} {statistics.median(times):8.1f} {max(times):8.1f}")
            if not args.no_verify:
                t = time.perf_counter()
                app.state.verifier.start()
                app.state.verifier.wait()
                print(f"background full ledger verification: {app.state.verifier.status.state} in "
                      f"{time.perf_counter() - t:.1f} s")
        app.state.workspace.close()
        ws.close()
        print(f"worst median {worst:.0f} ms per page (goal < 300 ms): {'met' if worst < 300 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
