"""Key custody: the file store against a PKCS#11 token (SoftHSM2), side by side in one run.

    .venv/bin/python bench/custody_bench.py [--frames 500000] [--repeat 5] [--releases 200]

Two workspaces alike but for sakai's custody: one keeps its keys in files (the embedded default),
one in a SoftHSM2 token (``onshore site custody migrate``). The same frames are ingested at sakai
in both. Measured, interleaved round by round so load on the shared machine falls on both:

- unwrap: a data key unwrapped by the custody alone (``KeyStore.unwrap``: AES-GCM in process
  against ``C_Decrypt`` in the token), per second;
- key release: ``keyservice.release`` as a read pays it (decision, withdrawal check, unwrap,
  signed ``key.release`` entry), per second;
- dataset read: ``datasets.read`` of the whole dataset (release + every shard decrypted with
  AES-GCM in process + Parquet decode), frames per second.

Goal (issue 20): a dataset read through the token >= 0.8x the file store's. Needs softhsm2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _stats import interleaved, rate_spread  # noqa: E402
from residency_bench import frames  # noqa: E402

POLICY = 'jurisdictions = ["JP"]\nsites = []\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--releases", type=int, default=200, help="key releases per round")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from conftest import build_consortium
    from onshore.keys import softhsm
    from onshore.workspace import Workspace, custody, datasets, keyservice

    softhsm.require()
    with tempfile.TemporaryDirectory(prefix="custody-bench-") as tmp:
        root = Path(tmp)
        softhsm.token_store(root / "hsm")
        table = frames(args.frames)
        src = root / "frames.parquet"
        pq.write_table(table, src)
        (root / "policy.toml").write_text(POLICY)
        spaces = {}
        for name in ("file", "pkcs11"):
            ws = build_consortium(Workspace.init(root / name, f"bench-{name}"), root)
            if name == "pkcs11":
                custody.migrate(ws, "sakai", softhsm.init_token(root / "hsm", "sakai"))
            datasets.ingest(ws, "furnace", "steelco", "sakai", root / "policy.toml", "furnace-line-3", [src])
            spaces[name] = ws
        contexts = {}
        for name, ws in spaces.items():
            from sqlalchemy import select

            from onshore.catalog import schema as T
            with ws.catalog.connect() as conn:
                wrapped = bytes(conn.execute(select(T.key_wraps.c.wrapped).where(
                    T.key_wraps.c.dataset == "furnace", T.key_wraps.c.site == "sakai")).scalar_one())
            contexts[name] = (ws.keystore("site:sakai"), wrapped)
        ctx = b"onshore-dataset-key:v1:furnace:sakai"
        n = args.releases

        def unwraps(name: str):  # type: ignore[no-untyped-def]
            store, wrapped = contexts[name]
            return lambda: [store.unwrap("dataset", "furnace", wrapped, ctx) for _ in range(n * 10)] and None

        def releases(name: str):  # type: ignore[no-untyped-def]
            ws = spaces[name]
            return lambda: [keyservice.release(ws, "furnace", "sakai", "read") for _ in range(n)] and None

        def reads(name: str):  # type: ignore[no-untyped-def]
            ws = spaces[name]
            return lambda: None if datasets.read(ws, "furnace", "sakai").num_rows == args.frames else 1 / 0

        t_unwrap = interleaved({k: unwraps(k) for k in spaces}, args.repeat)
        t_release = interleaved({k: releases(k) for k in spaces}, args.repeat)
        t_read = interleaved({k: reads(k) for k in spaces}, args.repeat)
        print(f"custody bench: {args.frames:,} frames at sakai, {args.repeat} rounds (min / median / max)")
        for k in spaces:
            print(f"  {k:7s} unwrap        {rate_spread(n * 10, t_unwrap[k])} keys/s")
            print(f"  {k:7s} key release   {rate_spread(n, t_release[k])} releases/s (decision + ledger)")
            print(f"  {k:7s} dataset read  {rate_spread(args.frames, t_read[k])} frames/s")
        med = {k: sorted(v)[len(v) // 2] for k, v in t_read.items()}
        ratio = med["file"] / med["pkcs11"]
        print(f"dataset read through the token: {ratio:.2f}x the file store's (goal >= 0.80x): "
              f"{'met' if ratio >= 0.8 else 'MISSED'}")
        for ws in spaces.values():
            ws.close()


if __name__ == "__main__":
    main()
