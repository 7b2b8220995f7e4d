"""Model bundles: time to attest and to verify a model trained on 10 datasets.

    .venv/bin/python bench/model_attest_bench.py [--datasets N] [--steps S] [--repeat R]

Builds a real workspace (three sites, two members), ingests N small datasets of one embodiment at
sakai (alternating owners), pre-trains a tiny model on all of them for S steps, evaluates nothing,
copies the model to tokyo, has two witnesses cosign a checkpoint, then times ``attest_model`` and
``verify_bundle`` (offline: bundle bytes and the trust root only) R times, pinned to one core.
Prints figures; it is not a test.
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
from onshore.attest.model_claim import attest_model  # noqa: E402
from onshore.attest.trust import build_trust_root  # noqa: E402
from onshore.attest.verify import verify_bundle  # noqa: E402
from onshore.model.text import HASHED  # noqa: E402
from onshore.train.loop import TrainConfig, TrainRequest, train  # noqa: E402
from onshore.workspace import Workspace, models  # noqa: E402
from onshore.workspace import datasets as D  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=10, help="verify runs to time")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="onshore-model-attest-bench-"))
    with Workspace.init(tmp / "ws", "model-attest-bench") as ws:
        build_consortium(ws, tmp)
        (tmp / "policy.toml").write_text(POLICY_JP)
        names = [f"furnace-{i:02d}" for i in range(args.datasets)]
        for i, name in enumerate(names):
            D.ingest(ws, name, ("steelco", "autoco")[i % 2], "sakai", tmp / "policy.toml", "furnace-line-3",
                     [write_frames(tmp / f"{name}.parquet", seed=i)])
        t = time.perf_counter()
        train(ws, TrainRequest("furnace-model", "sakai", "foundation-pretraining", tuple(names), size="tiny",
                               train=TrainConfig(steps=args.steps, batch_size=16, checkpoint_every=args.steps,
                                                 precision="fp32", text_encoder=HASHED, warmup=1)))
        train_s = time.perf_counter() - t
        models.copy_model(ws, "furnace-model", "tokyo")
        cosign_with_witnesses(ws, tmp)
        trust = build_trust_root(ws)
        t = time.perf_counter()
        bundle = attest_model(ws, "furnace-model")
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
    print(f"workspace: {ledger_size} ledger entries; {args.datasets} datasets, tiny model, {args.steps} steps "
          f"trained in {train_s:.1f} s")
    print(f"attest:    {n} cited entries, bundle {len(raw) / 1024:.0f} KiB, {attest_s * 1000:.0f} ms")
    print(f"verify:    median {statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms over "
          f"{args.repeat} runs (one core, K=2 witnesses)")
    print(f"command:   .venv/bin/python bench/model_attest_bench.py --datasets {args.datasets} --steps {args.steps}")


if __name__ == "__main__":
    main()
