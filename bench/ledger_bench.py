"""The SQL ledger: signed appends, proofs from stored nodes, bytes per entry; pymerkle beside it.

    .venv/bin/python bench/ledger_bench.py [--entries N] [--batch B] [--proofs P]

Pinned to one core. Appends are real entries (RFC 8785 canonical JSON, Ed25519 signature,
leaf hash, the subtrees they complete) committed to SQLite in batches of B. pymerkle's SqliteTree
appends the same leaf bytes (no signatures) on the same SQLite settings (WAL, synchronous=NORMAL),
interleaved with Onshore's appends of the same pre-signed entries. Proof figures read the nodes from
SQLite with one query per proof. Goals (issue 3): >= 10,000 signed appends/s; proofs at 1,000,000
entries >= 50,000/s (see bench/merkle_bench.py for the in-memory figures).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import interleaved, rate_spread  # noqa: E402

from onshore.catalog.db import open_engine
from onshore.ledger import merkle
from onshore.ledger.entries import Draft, sign_entry
from onshore.ledger.log import Ledger, ledger_metadata


def body(i: int) -> dict:  # type: ignore[type-arg]
    """A typical decision entry body."""
    return {"request": {"principal": "site:sakai", "action": "read", "dataset": f"d{i % 50}", "site": "sakai",
                        "purpose": "fine-tuning", "today": "2026-11-29"},
            "decision": "allow", "rules": ["dataset/d/grant"], "policy_hash": "ab" * 32, "site_jurisdiction": "JP"}


def unlinked_body(i: int) -> dict:  # type: ignore[type-arg]
    """The same decision naming no dataset: only such entries may be appended pre-signed (the ledger
    links and signs entries about a dataset inside its transaction)."""
    b = body(i)
    b["request"] = {k: v for k, v in b["request"].items() if k != "dataset"}
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--proofs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="onshore-ledger-bench-"))
    key = Ed25519PrivateKey.generate()

    sample = b"x" * 400  # about the size of a decision entry's signed bytes
    t = time.perf_counter()
    for _ in range(20_000):
        key.sign(sample)
    print(f"Ed25519 signing alone (cryptography/OpenSSL), the ceiling for signed appends "
          f"{20_000 / (time.perf_counter() - t):10,.0f}/s")
    # Both sides append the same leaves in the same batches to SQLite with the same durability
    # (WAL, synchronous=NORMAL: Onshore's settings, given to pymerkle's connection too), one
    # round each in turn, --repeat rounds, into fresh databases.
    try:
        from pymerkle import SqliteTree
    except ImportError:
        SqliteTree = None  # noqa: N806
        print("pymerkle not installed: its side is skipped")
    leaves: list[bytes] = []
    entries = [[sign_entry("decision", "site:sakai", unlinked_body(i), key)
                for i in range(start, min(start + args.batch, args.entries))]
               for start in range(0, args.entries, args.batch)]
    leaves = [e.leaf() for batch in entries for e in batch]
    rounds = iter(range(1000))

    def onshore_sign_and_append() -> None:
        r = next(rounds)
        lg = Ledger(open_engine(f"sqlite:///{tmp / f'ledger{r}.db'}", ledger_metadata, create=True))
        t0 = time.perf_counter()
        for start in range(0, args.entries, args.batch):
            lg.append([Draft("decision", "site:sakai", body(i), key)
                       for i in range(start, min(start + args.batch, args.entries))])
        times["onshore"].append(time.perf_counter() - t0)
        lg.close()

    def onshore_append_only() -> None:
        r = next(rounds)
        lg = Ledger(open_engine(f"sqlite:///{tmp / f'ledger{r}.db'}", ledger_metadata, create=True))
        t0 = time.perf_counter()
        for batch in entries:
            lg.append(batch)
        times["onshore-unsigned-work"].append(time.perf_counter() - t0)
        lg.close()

    def pymerkle_append() -> None:
        r = next(rounds)
        tree = SqliteTree(str(tmp / f"pymerkle{r}.db"))
        tree.con.execute("PRAGMA journal_mode=WAL")
        tree.con.execute("PRAGMA synchronous=NORMAL")
        t0 = time.perf_counter()
        for start in range(0, len(leaves), args.batch):
            tree.append_entries(leaves[start:start + args.batch])
        times["pymerkle"].append(time.perf_counter() - t0)
        tree.close()

    times: dict[str, list[float]] = {"onshore": [], "onshore-unsigned-work": [], "pymerkle": []}
    cases = {"onshore": onshore_sign_and_append, "onshore-unsigned-work": onshore_append_only}
    if SqliteTree is not None:
        cases["pymerkle"] = pymerkle_append
    interleaved({k: (lambda f=f: f() or 0.0) for k, f in cases.items()}, args.repeat)
    print(f"repeat {args.repeat}, interleaved; min / median / max")
    print(f"onshore  sign + link + append (canonical JSON, Ed25519, SQLite, batch {args.batch}) "
          f"{rate_spread(args.entries, times['onshore'])}/s (goal >= 10,000/s)")
    print(f"onshore  append of pre-signed entries (the work pymerkle does)            "
          f"{rate_spread(args.entries, times['onshore-unsigned-work'])}/s")
    if times["pymerkle"]:
        print(f"pymerkle SqliteTree.append_entries, same leaves, same pragmas           "
              f"{rate_spread(args.entries, times['pymerkle'])}/s")
        print(f"pymerkle bytes per entry on disk "
              f"{(tmp / 'pymerkle2.db').stat().st_size / len(leaves):10,.0f}" if (tmp / "pymerkle2.db").exists()
              else "")
    size = sum(f.stat().st_size for f in tmp.glob("ledger1.db*"))
    print(f"onshore  ledger bytes per entry on disk (entries + nodes + indexes)  {size / args.entries:10,.0f}")
    os.replace(tmp / "ledger1.db", tmp / "ledger.db")  # holds exactly `leaves`, for the proofs below

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
