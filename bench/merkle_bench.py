"""Merkle ledger benchmark: incremental appends, proofs at 1,000,000 entries, and pymerkle beside it.

Run:  .venv/bin/python bench/merkle_bench.py [--entries 1000000] [--proofs 50000]

Prints figures (proof and verification rates are the best of 3 runs); it is not a
timed test. The tree lives in MemoryNodeStore, so the figures are for
the pure tree functions; the SQL ledger adds its own query time on top.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import shlex
import sys
import time

from onshore.ledger import merkle

REPEATS = 3


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f}/s"


def best(fn, repeats: int = REPEATS):  # type: ignore[no-untyped-def]
    """Run ``fn`` ``repeats`` times; return (fastest seconds, last result), as timeit advises:
    slower runs measure other processes on the machine, not this code."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def bench_onshore(entries: int, proofs: int, rng: random.Random) -> None:
    store = merkle.MemoryNodeStore()
    t = time.perf_counter()
    for i in range(entries):
        store.append(i.to_bytes(8, "big"))
    dt = time.perf_counter() - t
    print(f"onshore  append (leaf hash + stored nodes)     {rate(entries, dt)}  ({entries:,} in {dt:.1f} s)")
    # A million long-lived hashes make the cyclic GC rescan them on every young collection; a
    # long-running ledger process would freeze them the same way.
    gc.collect()
    gc.freeze()

    n = store.size
    root = store.root()
    idx = [rng.randrange(n) for _ in range(proofs)]

    dt, batch = best(lambda: [store.read(merkle.inclusion_proof_plan(i, n)) for i in idx])
    print(f"onshore  inclusion proof, batched node read    {rate(proofs, dt)}  (at {n:,} entries)")

    dt, via_get = best(lambda: [merkle.inclusion_proof(i, n, store.get) for i in idx])
    print(f"onshore  inclusion proof, get() per node       {rate(proofs, dt)}")
    assert batch == via_get

    leaves = [store.get(0, i) for i in idx]

    def verify_all() -> None:
        for i, h, p in zip(idx, leaves, batch, strict=True):
            merkle.verify_inclusion(i, n, h, p, root)

    dt, _ = best(verify_all)
    print(f"onshore  inclusion proof verification          {rate(proofs, dt)}")

    k = max(1, proofs // 5)
    olds = [rng.randrange(1, n) for _ in range(k)]
    dt, cps = best(lambda: [store.read(merkle.consistency_proof_plan(m, n)) for m in olds])
    print(f"onshore  consistency proof, batched            {rate(k, dt)}")
    old_roots = [store.root(m) for m in olds]

    def verify_consistency_all() -> None:
        for m, r1, p in zip(olds, old_roots, cps, strict=True):
            merkle.verify_consistency(m, n, r1, root, p)

    dt, _ = best(verify_consistency_all)
    print(f"onshore  consistency proof verification        {rate(k, dt)}")
    gc.unfreeze()


def bench_pymerkle(entries: int, proofs: int, rng: random.Random) -> None:
    try:
        import pymerkle
    except ImportError:
        print("pymerkle not installed; skipping the side-by-side figures")
        return
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    t = time.perf_counter()
    for i in range(entries):
        tree.append_entry(i.to_bytes(8, "big"))
    dt = time.perf_counter() - t
    print(f"pymerkle append (InmemoryTree.append_entry)    {rate(entries, dt)}  ({entries:,} in {dt:.1f} s)")
    n = tree.get_size()
    k = max(1, proofs // 25)  # pymerkle is slower; fewer samples keep the run short
    idx = [rng.randrange(1, n + 1) for _ in range(k)]  # pymerkle counts leaves from 1
    dt, ps = best(lambda: [tree.prove_inclusion(i) for i in idx])
    print(f"pymerkle inclusion proof                       {rate(k, dt)}  ({k:,} samples)")
    root = tree.get_root()
    leaves = [tree.get_leaf(i) for i in idx]

    def verify_all() -> None:
        for h, p in zip(leaves, ps, strict=True):
            pymerkle.verify_inclusion(h, root, p)

    dt, _ = best(verify_all)
    print(f"pymerkle inclusion proof verification          {rate(k, dt)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--proofs", type=int, default=50_000)
    ap.add_argument("--skip-pymerkle", action="store_true")
    args = ap.parse_args(argv)
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'}")
    rng = random.Random(9162)
    bench_onshore(args.entries, args.proofs, rng)
    if not args.skip_pymerkle:
        bench_pymerkle(args.entries, args.proofs, rng)


if __name__ == "__main__":
    main()
