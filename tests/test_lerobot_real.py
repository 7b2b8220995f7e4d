"""Onshore's LeRobot export against LeRobot itself (lerobot 0.4.4 in .lerobot-venv).

LeRobot cannot join .venv (it requires torch<2.11; ours is pinned 2.13), so ``make test`` builds
``.lerobot-venv`` (``make lerobot-venv``: lerobot and the light packages it imports, --no-deps,
borrowing .venv's torch) and this test runs bench/lerobot_side/check.py there on two real exports
of a real workspace. Skipped, saying so, only when that virtualenv has not been built.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import make_frames, write_frames
from onshore.errors import PolicyDenied
from onshore.telemetry.lerobot import read_lerobot_v3
from onshore.telemetry.provenance import episode_fingerprints, read_provenances
from onshore.workspace import Workspace, datasets, registry

ROOT = Path(__file__).resolve().parent.parent
LEROBOT_PYTHON = Path(os.environ.get("LEROBOT_PYTHON", ROOT / ".lerobot-venv" / "bin" / "python"))
SIDE = ROOT / "bench" / "lerobot_side" / "check.py"

# The robot's own channels and the world's interleaved on purpose: the export splits them into
# observation.state and observation.environment_state, the import must restore this order.
ARM_TOML = """\
name = "pick-arm"
control_hz = 10
[[state]]
name = "hand_x"
unit = "m"
low = 0.0
high = 25.0
[[state]]
name = "obj_x"
unit = "m"
low = 0.0
high = 25.0
[[state]]
name = "obj_y"
unit = "m"
low = 0.0
high = 25.0
[[state]]
name = "gripper"
unit = "1"
low = 0.0
high = 25.0
[[state]]
name = "goal_x"
unit = "m"
low = 0.0
high = 25.0
[[action]]
name = "hand_dx"
unit = "m"
low = 0.0
high = 100.0
[[action]]
name = "grip"
unit = "1"
low = 0.0
high = 100.0
[extra]
environment_groups = ["obj", "goal"]
[extra.groups]
hand = ["hand_x", "gripper"]
obj = ["obj_x", "obj_y"]
goal = ["goal_x"]
"""

pytestmark = pytest.mark.skipif(not LEROBOT_PYTHON.is_file(),
                                reason=f"no LeRobot virtualenv at {LEROBOT_PYTHON}: run `make lerobot-venv`")


def test_lerobot_loads_trains_and_aggregates_our_export(ws: Workspace, tmp_path: Path,
                                                         policy_file: Path) -> None:
    arm = tmp_path / "arm.toml"
    arm.write_text(ARM_TOML)
    registry.add_embodiment(ws, arm)
    src_a = make_frames(episodes=3, frames=30, state_dim=5, seed=1)
    src_b = make_frames(episodes=2, frames=30, state_dim=5, seed=2)
    for name, src in (("arms-a", src_a), ("arms-b", src_b)):
        datasets.ingest(ws, name, "steelco", "sakai", policy_file, "pick-arm",
                        [write_frames(tmp_path / f"{name}.parquet", src)])
        datasets.export(ws, name, "sakai", tmp_path / name, purpose="fine-tuning")
    a, b = tmp_path / "arms-a", tmp_path / "arms-b"

    assert "It may be used only for foundation-pretraining and fine-tuning." in (a / "README.md").read_text()
    proc = subprocess.run([str(LEROBOT_PYTHON), str(SIDE), str(a), str(b), str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["lerobot"] == "0.4.4"
    # The card as huggingface_hub reads it: LeRobot's header fields and the provenance block.
    header = said["card"]["data"]
    assert header["license"] == "other" and "LeRobot" in header["tags"]
    assert header["task_categories"] == ["robotics"]
    assert header["configs"] == [{"config_name": "default", "data_files": "data/*/*.parquet"}]
    assert header["onshore"] == json.loads((a / "meta" / "info.json").read_text())["onshore"]
    for step in ("card", "metadata", "act_validate_features", "diffusion_validate_features", "act_train", "aggregate",
                 "delete_episodes"):
        assert said[step]["ok"], (step, said[step])
    assert said["metadata"]["fps"] == 10 and said["metadata"]["frames"] == 90
    assert said["policy_features"] == {"observation.state": ["STATE", [2]],
                                       "observation.environment_state": ["ENV", [3]],
                                       "action": ["ACTION", [2]]}
    losses = said["act_train"]["losses"]
    assert said["act_train"]["steps"] == 5 and all(np.isfinite(losses))
    assert said["act_train"]["sample_keys"] == ["action", "action_is_pad", "observation.environment_state",
                                                "observation.state"]

    # aggregate_datasets drops info.json's block but keeps each episode's provenance column.
    agg, deleted = Path(said["aggregate"]["root"]), Path(said["delete_episodes"]["root"])
    assert said["aggregate"]["episodes"] == 5 and not said["aggregate"]["info_keeps_onshore_block"]
    assert "onshore/provenance" in said["aggregate"]["episode_columns"]
    assert sorted(p["dataset"] for p in read_provenances(agg)) == ["arms-a", "arms-b"]
    # delete_episodes rebuilds episode rows and drops every block: the fingerprints remain.
    assert read_provenances(deleted) == [] and said["delete_episodes"]["episodes"] == 2

    # Channels back in the embodiment's order: every episode is recognised by its fingerprint.
    state_order = ["hand_x", "obj_x", "obj_y", "gripper", "goal_x"]
    back = read_lerobot_v3(agg, state_order).table
    assert episode_fingerprints(back) == episode_fingerprints(src_a) + episode_fingerprints(src_b)
    assert back.column("observation.state").to_pylist()[:90] == src_a.column("observation.state").to_pylist()

    # Re-ingest what LeRobot wrote: another member is refused by the episodes' provenance (the
    # info block is gone), and by fingerprints where LeRobot dropped every block; the owner may.
    loose = tmp_path / "loose.toml"
    loose.write_text('jurisdictions = ["JP"]\npurposes = ["anything"]\nexpires = 2035-01-01\n')
    with pytest.raises(PolicyDenied, match="says was exported from dataset 'arms-a' of member 'steelco'"):
        datasets.ingest(ws, "mine", "autoco", "sakai", loose, "pick-arm", [agg])
    with pytest.raises(PolicyDenied, match="episodes identical to episodes of dataset 'arms-a'"):
        datasets.ingest(ws, "mine", "autoco", "sakai", loose, "pick-arm", [deleted])
    assert {d["name"] for d in datasets.list_datasets(ws)} == {"arms-a", "arms-b"}
    result = datasets.ingest(ws, "arms-ab", "steelco", "sakai", policy_file, "pick-arm", [agg])
    assert result.episodes == 5 and result.frames == 150
    again = datasets.read(ws, "arms-ab", "sakai")
    assert episode_fingerprints(again) == episode_fingerprints(back)
