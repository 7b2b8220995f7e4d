"""Simulator output is ingestible as it is: real validation, real encryption, read back unchanged."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import POLICY_JP
from onshore.model.network import state_groups
from onshore.sim import registry as sims
from onshore.sim.generate import generate
from onshore.sim.sensors import SensorOptions
from onshore.workspace import Workspace, datasets, registry


@pytest.mark.parametrize("env,tasks,seconds", [("metaworld", ["reach-v3"], None), ("tep", ["idv-4"], 900.0)])
def test_generated_telemetry_passes_ingest_validation(tmp_path: Path, env: str, tasks: list[str],
                                                      seconds: float | None) -> None:
    out = tmp_path / "tel"
    res = generate(env, tasks, 2, seed=3, out=out, workers=1, seconds=seconds,
                   sensors=SensorOptions(noise=0.002, quantize=True))
    ws = Workspace.init(tmp_path / "ws", "sim-ingest")
    registry.add_site(ws, "sakai", "JP", "storage,compute")
    registry.add_member(ws, "maker")
    emb = registry.add_embodiment(ws, res.embodiment_path)
    # the written spec keeps the simulator's named state groups: a model's stem uses them, not blocks
    named = sims.env_module(env).embodiment().extra["groups"]
    assert emb.extra["groups"] == named and emb.extra["seed"] == 3
    assert [g for g, _ in state_groups(emb)] == list(named)
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY_JP)
    result = datasets.ingest(ws, "sim", "maker", "sakai", policy, emb.name, res.files)
    assert result.frames == res.frames and result.episodes == res.episodes
    back = datasets.read(ws, "sim", "sakai")
    original = pq.read_table(res.files[0])
    for col in ("observation.state", "action", "timestamp", "next.success"):
        assert back.column(col).to_pylist() == original.column(col).to_pylist()
    if env == "tep":
        assert back.column("fault").to_pylist() == original.column("fault").to_pylist()
    ws.close()
