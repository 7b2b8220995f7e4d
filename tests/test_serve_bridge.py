"""The OPC UA bridge end to end on loopback: a real asyncua server runs a simulated plant (Tennessee
Eastman through tep-studio, a Meta-World task) that steps on the actions the bridge writes, the
bridge asks a real policy server, and the run comes back as a resident dataset."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from _training import make_consortium
from onshore.cli.app import main
from onshore.errors import OnshoreError, ValidationError
from onshore.model.text import HASHED
from onshore.serve import service, tokens
from onshore.serve.bridge import BridgeMap, run_bridge
from onshore.serve.plant import PlantThread, SimPlant
from onshore.serve.record import DEADLINE_MISSES, RecordOptions
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, models

RECORD_POLICY = ('jurisdictions = ["JP"]\nsites = ["tokyo"]\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'
                 'derived_models = "stop-serving"\n')


@pytest.fixture(scope="module")
def plant_ws(tmp_path_factory: pytest.TempPathFactory, telemetry: dict[str, Path]) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("bridge")
    ws = make_consortium(root, telemetry)
    config = TrainConfig(steps=2, batch_size=8, checkpoint_every=2, log_every=1, precision="fp32",
                         text_encoder=HASHED, warmup=1)
    train(ws, TrainRequest("plants", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                           train=config))
    models.copy_model(ws, "plants", "tokyo")
    (root / "record.toml").write_text(RECORD_POLICY)
    yield ws
    ws.close()


def test_tep_plant_through_the_cli_bridge_with_a_latched_e_stop(plant_ws: Workspace, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    tok = tokens.issue(plant_ws, "tokyo", "tep-bridge")
    plant = SimPlant("tep", "base", seed=3, estop_at=8)
    with service.start(plant_ws, "plants", "tokyo", port=0) as run, PlantThread(plant) as pt:
        map_file = plant.write_map(tmp_path / "tep.toml")
        capsys.readouterr()
        code = main(["bridge", "opcua", "--endpoint", pt.endpoint, "--map", str(map_file), "--server", run.url,
                     "--token", tok, "--hz", "20", "--steps", "24", "--json"])
        out = capsys.readouterr().out
        assert code == 0, out
        report = json.loads(out)
        assert report["steps"] == 24 and report["hz"] == 20
        assert plant.frames == report["written"] > 8  # the plant stepped once per command written
        assert report["estops"] == 1 and report["interventions"]["estop"] >= 1
        safe = np.array(plant.map_dict()["envelope"]["safe_action"])
        lo = np.array([c.low for c in plant.emb.action])
        hi = np.array([c.high for c in plant.emb.action])
        written = np.stack(plant.actions)
        assert ((written >= lo) & (written <= hi)).all()
        # latched: every command after the button is the safe action (TEP valves have no max_rate)
        np.testing.assert_allclose(written[-1], safe)
        np.testing.assert_allclose(written[9:], np.broadcast_to(safe, written[9:].shape))
        assert not np.allclose(written[:8], safe)  # before it, the model drove the valves
        # a refused token: nothing is written, exit 1 with the reason
        before = plant.frames
        assert main(["bridge", "opcua", "--endpoint", pt.endpoint, "--map", str(map_file), "--server", run.url,
                     "--token", "onshore_forged", "--steps", "2"]) == 1
        assert plant.frames == before
    assert run.report is not None and run.report.refused == 1


def test_metaworld_plant_run_is_recorded_as_a_resident_dataset(plant_ws: Workspace, tmp_path: Path) -> None:
    tok = tokens.issue(plant_ws, "tokyo", "arm-bridge")
    record = RecordOptions(plant_ws.root.parent / "record.toml", "arm-maker", "arm-run-1")
    plant = SimPlant("metaworld", "push-v3", seed=5)
    with service.start(plant_ws, "plants", "tokyo", port=0, record=record) as run, PlantThread(plant) as pt:
        mapping = BridgeMap.from_toml(plant.write_map(tmp_path / "arm.toml"))
        report = asyncio.run(run_bridge(pt.endpoint, mapping, run.url, tok, steps=30))
        assert report.steps == 30 and report.hz == 80.0  # the embodiment's control rate
        assert plant.frames == report.written
        with pytest.raises(ValidationError, match="state and 4 action"):
            asyncio.run(run_bridge(pt.endpoint, replace(mapping, state=mapping.state[:-1]), run.url, tok, steps=1))
        with pytest.raises(OnshoreError, match="cannot reach the OPC UA server"):
            asyncio.run(run_bridge("opc.tcp://127.0.0.1:9", mapping, run.url, tok, steps=1))
    stop = run.report
    assert stop is not None and stop.recorded[0]["dataset"] == "arm-run-1"
    table = datasets.read(plant_ws, "arm-run-1", "tokyo", purpose="fine-tuning").to_pydict()
    n = len(table["frame_index"])
    # one frame per state the bridge sent; the bridge also wrote its watchdog's own commands
    assert n == report.requests >= report.written - report.interventions["watchdog"] > 0
    assert stop.actions == n and stop.recorded[0]["episodes"] == 1  # the mismatched map never acted
    # closed loop: each recorded state is a state the plant published, in order, from the first
    published = np.stack(plant.states).astype(np.float32)
    recorded = np.asarray(table["observation.state"][:n], dtype=np.float32)
    np.testing.assert_allclose(recorded[0], published[0])
    for s in recorded:
        assert np.isclose(published, s).all(axis=1).any()
    misses = table[DEADLINE_MISSES][:n]
    assert misses == sorted(misses) and misses[-1] <= report.deadline_misses


def test_eval_a_served_model_in_closed_loop(plant_ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    tok = tokens.issue(plant_ws, "tokyo", "evaluator")
    with service.start(plant_ws, "plants", "tokyo", port=0) as run:
        capsys.readouterr()
        code = main(["-w", str(plant_ws.root), "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                     "--workers", "1", "--policy", run.url, "--token", tok, "--json", "--reports",
                     str(plant_ws.root / "reports")])
        out = capsys.readouterr().out
        assert code == 0, out
        result = json.loads(out)
        assert result["policy"] == run.url and result["tasks"]["reach-v3"]["episodes"] == 1
        assert main(["eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--policy", run.url,
                     "--token", "onshore_forged"]) == 1
    assert run.report is not None and run.report.actions == result["tasks"]["reach-v3"]["mean_length"]
