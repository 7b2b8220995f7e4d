"""The SQL ledger: signed appends, proofs from stored nodes, bytes per entry; pymerkle beside it.

    .venv/bin/python bench/ledger_bench.py [--entries N] [--batch B] [--proofs P]

Pinned to one core. Appends are real entries (RFC 8785 canonical JSON, Ed25519 signature,
leaf hash, the subtrees they complete) committed to SQLite in batches of B. pymerkle's SqliteTree
appends the same leaf bytes (no signatures) in the same run. Proof figures read the nodes from
SQLite with one query per proof. Goals (issue 3): >= 10,000 signed appends/s; proofs at 1,000,000
entries >= 50,000/s (see bench/merkle_bench.py for the in-memory figures).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onshore.catalog.db import open_engine
from onshore.ledger import merkle
from onshore.ledger.entries import sign_entry
from onshore.ledger.log import Ledger, ledger_metadata


def body(i: int) -> dict:  # type: ignore[type-arg]
    """A typical decision entry body."""
    return {"request": {"principal": "site:sakai", "action": "read", "dataset": f"d{i % 50}", "site": "sakai",
                        "purpose": "fine-tuning", "today": "2026-11-29"},
            "decision": "allow", "rules": ["dataset/d/grant"], "policy_hash": "ab" * 32, "site_jurisdiction": "JP"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--proofs", type=int, default=20_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="onshore-ledger-bench-"))
    key = Ed25519PrivateKey.generate()
    ledger = Ledger(open_engine(f"sqlite:///{tmp / 'ledger.db'}", ledger_metadata, create=True))

    sample = b"x" * 400  # about the size of a decision entry's signed bytes
    t = time.perf_counter()
    for _ in range(20_000):
        key.sign(sample)
    print(f"Ed25519 signing alone (cryptography/OpenSSL), the ceiling for signed appends "
          f"{20_000 / (time.perf_counter() - t):10,.0f}/s")
    t = time.perf_counter()
    leaves: list[bytes] = []
    for start in range(0, args.entries, args.batch):
        batch = [sign_entry("decision", "site:sakai", body(i), key)
                 for i in range(start, min(start + args.batch, args.entries))]
        leaves += [e.leaf() for e in batch]
        ledger.append(batch)
    dt = time.perf_counter() - t
    ledger.engine.dispose()
    size = sum(f.stat().st_size for f in tmp.glob("ledger.db*"))
    print(f"onshore  signed appends (sign + canonical JSON + SQLite, batch {args.batch}) "
          f"{args.entries / dt:10,.0f}/s  ({args.entries:,} in {dt:.1f} s; goal >= 10,000/s)")
    print(f"onshore  ledger bytes per entry on disk (entries + nodes + indexes)  {size / args.entries:10,.0f}")

    try:
        from pymerkle import SqliteTree
    except ImportError:
        print("pymerkle not installed: skipped")
    else:
        tree = SqliteTree(str(tmp / "pymerkle.db"))
        t = time.perf_counter()
        for start in range(0, len(leaves), args.batch):
            tree.append_entries(leaves[start:start + args.batch])
        dt = time.perf_counter() - t
        print(f"pymerkle SqliteTree.append_entries (same leaves, no signatures)       "
              f"{len(leaves) / dt:10,.0f}/s")
        tree.close()
        print(f"pymerkle bytes per entry on disk                                       "
              f"{(tmp / 'pymerkle.db').stat().st_size / len(leaves):10,.0f}")

    ledger = Ledger(open_engine(f"sqlite:///{tmp / 'ledger.db'}", ledger_metadata))
    n = ledger.size()
    root = ledger.root()
    rng = random.Random(0)
    idx = [rng.randrange(n) for _ in range(args.proofs)]
    t = time.perf_counter()
    proofs = [ledger.inclusion_proof(i, n) for i in idx]
    gen = args.proofs / (time.perf_counter() - t)
    hashes = [merkle.leaf_hash(leaves[i]) for i in idx]
    t = time.perf_counter()
    for i, h, p in zip(idx, hashes, proofs, strict=True):
        merkle.verify_inclusion(i, n, h, p, root)
    ver = args.proofs / (time.perf_counter() - t)
    print(f"onshore  inclusion proofs from SQLite at {n:,} entries                 {gen:10,.0f}/s")
    print(f"onshore  inclusion proof verification at {n:,} entries                {ver:10,.0f}/s")


if __name__ == "__main__":
    main()
