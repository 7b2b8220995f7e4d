"""Does LeRobot itself accept Onshore's LeRobot export? Prints what LeRobot's own code said.

    make lerobot-venv                       # once: LeRobot beside our CPU torch (see the Makefile)
    .venv/bin/python bench/lerobot_bench.py [--episodes 3] [--lerobot-python .lerobot-venv/bin/python]

Generates real Meta-World expert episodes (reach-v3) with Onshore's simulator, exports them twice
as LeRobotDataset v3.0 (two datasets of two owners, as ``onshore dataset export`` writes them,
card included), then runs bench/lerobot_side/check.py in the LeRobot virtualenv: LeRobot's
metadata loader, ``dataset_to_policy_features``, ACT's and Diffusion's ``validate_features``, five
ACT training steps, ``aggregate_datasets`` of both exports and ``delete_episodes``. Back here,
Onshore reads what LeRobot wrote: the provenance blocks it can still find and whether every
episode's fingerprint is unchanged (the backstop). Skips, saying why, when the LeRobot
virtualenv is missing (lerobot cannot join .venv: it requires torch<2.11, ours is 2.13).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onshore.sim.generate import generate
from onshore.telemetry.embodiment import Embodiment
from onshore.telemetry.lerobot import read_lerobot_v3, write_lerobot_v3
from onshore.telemetry.provenance import episode_fingerprints, read_provenances
from onshore.workspace import datasetcard

ROOT = Path(__file__).resolve().parent.parent
SIDE = ROOT / "bench" / "lerobot_side" / "check.py"


def _block(dataset: str, owner: str) -> dict:
    return {"dataset": dataset, "owner": owner, "workspace": "bench", "site": "sakai", "action": "export",
            "decision_index": 7, "policy_hash": "0" * 64, "cedar_hash": "1" * 64}


def _export(table, emb: Embodiment, out: Path, dataset: str, owner: str) -> None:
    block = _block(dataset, owner)
    policy = {"jurisdictions": ["JP"], "sites": [], "purposes": ["training"], "expires": "2027-12-31",
              "derived_models": "keep", "redistribution": False}

    def card(info: dict) -> str:
        return datasetcard.render(datasetcard.CardFacts(
            dataset=dataset, owner=owner, embodiment=emb.name, site="sakai", jurisdiction="JP", policy=policy,
            provenance=block, features=info["features"], fps=info["fps"], episodes=info["total_episodes"],
            frames=info["total_frames"], tasks=["reach-v3"]))

    write_lerobot_v3(table, emb, out, provenance=block, card=card)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--lerobot-python", default=os.environ.get("LEROBOT_PYTHON",
                                                               str(ROOT / ".lerobot-venv" / "bin" / "python")))
    args = ap.parse_args()
    if not Path(args.lerobot_python).is_file():
        print(f"skipped: no LeRobot virtualenv at {args.lerobot_python} (make lerobot-venv)")
        return 0
    with tempfile.TemporaryDirectory(prefix="onshore-lerobot-") as tmp:
        work = Path(tmp)
        gen = generate("metaworld", ["reach-v3"], args.episodes, 0, work / "gen", workers=1)
        emb = Embodiment.from_toml(gen.embodiment_path)
        table = pa.concat_tables([pq.read_table(f) for f in gen.files])
        a, b = work / "a", work / "b"
        _export(table, emb, a, "arms-alpha", "alpha")
        _export(table, emb, b, "arms-beta", "beta")
        before = episode_fingerprints(table)
        info = json.loads((a / "meta" / "info.json").read_text())
        print(f"export: {gen.episodes} episodes, {gen.frames} frames, fps {info['fps']!r}, features "
              + ", ".join(f"{k} {v['shape']}" for k, v in info["features"].items() if v["dtype"] == "float32"))
        proc = subprocess.run([args.lerobot_python, str(SIDE), str(a), str(b), str(work)], capture_output=True,
                              text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        said = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(said, indent=2))
        state_order = [c.name for c in emb.state]
        for name in ("aggregate", "delete_episodes"):
            step = said.get(name, {})
            if not step.get("ok"):
                continue
            root = Path(step["root"])
            blocks = read_provenances(root)
            back = read_lerobot_v3(root, state_order).table
            prints = episode_fingerprints(back)
            print(f"onshore reads LeRobot's {name}: provenance blocks of "
                  f"{sorted({(p['dataset'], p['owner']) for p in blocks})}; "
                  f"{sum(p in before for p in prints)}/{len(prints)} episode fingerprints match the source")
        ok = all(said.get(k, {}).get("ok") for k in ("metadata", "act_validate_features",
                                                     "diffusion_validate_features", "act_train", "aggregate"))
        print("LeRobot accepted the export" if ok else "LeRobot refused a step (see above)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
