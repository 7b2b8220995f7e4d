"""`onshore monitor`: a tiny plant model fitted on normal Tennessee Eastman telemetry, its threshold
read back from the signed ledger, a faulty plant raising alarms that land in a resident dataset,
refusals where the model or data may not be used, and the fault-detection protocol's pieces."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from onshore.errors import NotFoundError, PolicyDenied, ValidationError
from onshore.eval import faults as FD
from onshore.model.text import HASHED
from onshore.serve import monitor
from onshore.sim.generate import generate
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, models, registry

POLICY = """jurisdictions = ["JP"]
sites = []
purposes = ["foundation-pretraining", "monitoring"]
expires = 2031-03-31
derived_models = "keep"
"""


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("monitor")
    ws = Workspace.init(root / "ws", "monitor-test")
    registry.add_site(ws, "sakai", "JP", "storage,compute")
    registry.add_site(ws, "ohio", "US", "storage,compute")
    registry.add_site(ws, "tokyo", "JP", "storage,compute,serve")
    registry.add_member(ws, "chem")
    generate("tep", ["base"], 6, 11, root / "normal", workers=1, seconds=360.0)  # 200 frames each
    registry.add_embodiment(ws, root / "normal" / "tennessee-eastman.toml")
    (root / "policy.toml").write_text(POLICY)
    datasets.ingest(ws, "normal", "chem", "sakai", root / "policy.toml", "tennessee-eastman",
                    sorted((root / "normal").glob("*.parquet")))
    cfg = TrainConfig(steps=60, batch_size=32, checkpoint_every=60, precision="fp32", text_encoder=HASHED, warmup=5,
                      lr=3e-3)
    train(ws, TrainRequest("plant-tiny", "sakai", "foundation-pretraining", ("normal",), size="tiny", train=cfg,
                           model_overrides=(("history", 8), ("chunk", 4))))
    models.copy_model(ws, "plant-tiny", "tokyo")  # served where it sits: tokyo has the serve role
    yield ws
    ws.close()


def test_fit_is_recorded_and_read_back_from_the_ledger(plant: Workspace) -> None:
    f = monitor.fit(plant, "plant-tiny", "sakai", "normal", window=5, far=0.05)
    entry = plant.ledger.get(f.index).entry
    assert entry.kind == "model.use" and entry.actor == "site:sakai" and entry.body["use"] == "monitor.fit"
    assert entry.body["dataset"] == "normal" and entry.body["episodes"] == 6 and entry.body["frames"] == 6 * 200
    back = monitor.latest_fit(plant, "plant-tiny", "sakai")
    assert back.threshold == f.threshold and back.window == 5 and back.index == f.index
    assert np.array_equal(back.scale.spread, f.scale.spread) and f.threshold > 0
    assert len(back.scale.centre) == 41 + 12  # every measurement and every valve


def test_a_fault_raises_alarms_that_land_in_a_resident_dataset(plant: Workspace, tmp_path: Path) -> None:
    monitor.fit(plant, "plant-tiny", "sakai", "normal", window=5, far=0.05)
    (tmp_path / "alarms.toml").write_text(POLICY)
    r = monitor.run_simulated(plant, "plant-tiny", "sakai", "idv-6", seconds=1800.0, seed=3,
                              record=("chem", tmp_path / "alarms.toml", "watch-idv6"))
    assert r.frames == 1000 and r.fault_onset is not None and 250 <= r.fault_onset <= 500
    assert r.first_alarm is not None and r.first_alarm >= 0 and r.alarms > 0
    table = datasets.read(plant, "watch-idv6", "sakai", "monitoring")
    alarm, fault = table.column("alarm").to_numpy(), table.column("fault").to_numpy()
    # IDV 6 (loss of A feed) is the plant's largest upset: once it has run a while, the model's
    # predictions are far off and the monitor alarms on most frames; before it, on few
    assert alarm[fault == 6][100:].mean() > 0.9
    assert alarm[fault == 0].mean() < alarm[fault == 6].mean()
    entry = plant.ledger.get(r.index).entry
    assert entry.body["use"] == "monitor.run" and entry.body["alarms"] == int(alarm.sum())
    assert entry.body["dataset"] == "watch-idv6" and plant.row("dataset", "watch-idv6")["owner"] == "chem"


def test_refusals_change_nothing(plant: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = plant.ledger.size()
    with pytest.raises(NotFoundError, match="onshore monitor fit"):
        monitor.run_simulated(plant, "plant-tiny", "ohio", "base", seconds=60.0)
    assert plant.ledger.size() == size
    with pytest.raises(ValidationError, match="--far"):
        monitor.fit(plant, "plant-tiny", "sakai", "normal", far=0.9)
    with pytest.raises(ValidationError, match="--window"):
        monitor.fit(plant, "plant-tiny", "sakai", "normal", window=0)
    with pytest.raises(PolicyDenied):  # JP data: a US site may neither use the model nor read the data
        monitor.fit(plant, "plant-tiny", "ohio", "normal")
    code, _, err = run_cli(capsys, "-w", str(plant.root), "monitor", "plant-tiny", "--site", "sakai", "--task",
                           "idv-99")
    assert code == 1 and "idv-99" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "-w", str(plant.root), "monitor", "plant-tiny", "--site", "sakai",
                           "--record-member", "chem")
    assert code == 2 and "--record-policy" in err
    code, _, err = run_cli(capsys, "-w", str(plant.root), "monitor", "plant-tiny", "--site", "sakai", "--endpoint",
                           "opc.tcp://127.0.0.1:9")
    assert code == 2 and "--map" in err
    code, _, err = run_cli(capsys, "-w", str(plant.root), "monitor", "fit", "no-such-model", "--site", "sakai",
                           "--dataset", "normal")
    assert code == 1 and "no-such-model" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "-w", str(plant.root), "monitor", "no-such-model", "--site", "sakai")
    assert code == 1 and "no-such-model" in err and "Traceback" not in err
    bad_map = tmp_path / "map.toml"
    bad_map.write_text("state = [\"ns=2;s=x\"\n")  # not TOML: an unclosed list
    code, _, err = run_cli(capsys, "-w", str(plant.root), "monitor", "plant-tiny", "--site", "sakai", "--endpoint",
                           "opc.tcp://127.0.0.1:9", "--map", str(bad_map), "--security", "none")
    assert code == 1 and "map.toml" in err and "Traceback" not in err


def test_cli_fit_then_watch(plant: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "-w", str(plant.root), "monitor", "fit", "plant-tiny", "--site", "sakai",
                           "--dataset", "normal", "--window", "5", "--far", "0.05")
    assert code == 0 and "threshold" in out and "ledger entry" in out
    code, out, _ = run_cli(capsys, "-w", str(plant.root), "monitor", "plant-tiny", "--site", "sakai", "--task",
                           "base", "--seconds", "180", "--json")
    assert code == 0
    import json

    report = json.loads(out)
    assert report["frames"] == 100 and report["fault_onset_frame"] is None


def test_protocol_pieces() -> None:
    assert np.allclose(FD.trailing_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    rng = np.random.default_rng(0)
    normal = [rng.normal(size=10_000)]
    limit = FD.threshold(normal, 0.01)
    assert abs(np.mean(normal[0] > limit) - 0.01) < 0.001
    stat = np.concatenate([np.zeros(50), np.ones(50) * 10])
    assert FD.detect(stat, 40, 5.0) == (50 / 60, 10)
    assert FD.detect(np.zeros(10), 5, 1.0) == (0.0, None)
    # PCA on data that lives on a plane: SPE is ~0 on the plane and large off it
    base = rng.normal(size=(500, 2)) @ np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]])
    pca = FD.Pca.fit(base + rng.normal(scale=1e-3, size=base.shape), var=0.99)
    assert pca.axes.shape[1] == 2
    _, spe_on = pca.statistics(base[:5])
    _, spe_off = pca.statistics(base[:5] + np.array([5.0, -5.0, 5.0]))
    assert spe_on.max() < 1e-2 < spe_off.min()
    with pytest.raises(ValidationError):
        FD.Pca.fit(np.zeros((2, 5)))


def _pi_over_opcua(endpoint: str, nodes: dict, periods: int) -> threading.Thread:
    """The plant's own PI controller on a thread, reading its states and writing its valves over OPC UA."""
    import asyncio

    from asyncua import Client as OpcClient
    from asyncua import ua

    from onshore.sim import tep

    async def pi_controller() -> None:
        c = OpcClient(endpoint, timeout=5)
        await c.connect()
        try:
            states = [c.get_node(n) for n in nodes["state"]]
            actions = [c.get_node(n) for n in nodes["action"]]
            pi = tep.TepEnv().expert()
            pi.reset(tep.task_text("base"))
            for _ in range(periods):
                await asyncio.sleep(0.05)
                s = np.asarray(await c.read_values(states), dtype=np.float32)
                a = pi.act(s)
                await c.write_values(actions, [ua.Variant(float(x), ua.VariantType.Double) for x in a])
        finally:
            await c.disconnect()

    t = threading.Thread(target=lambda: asyncio.run(pi_controller()))
    t.start()
    return t


# --- onshore shadow: the model beside the controller, recorded for DAgger ------------------------------

def test_shadow_records_the_controllers_labels_and_the_models_proposals(plant: Workspace, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.serve.shadow import run_shadow
    from onshore.sim import tep

    (tmp_path / "p.toml").write_text(POLICY)
    pure = run_shadow(plant, "plant-tiny", "tokyo", ["base"], member="chem", policy=tmp_path / "p.toml",
                      dataset="shadow-pure", seconds=90.0, seed=4)
    assert pure.frames == 50 and pure.model_applied == 0 and pure.episodes == 1
    table = datasets.read(plant, "shadow-pure", "tokyo", "monitoring")
    states = np.asarray(table.column("observation.state").to_pylist())
    labels = np.asarray(table.column("action").to_pylist())
    # pure shadow: the PI controller drove, so the recording is exactly its own closed-loop run
    env = tep.TepEnv()
    from onshore.sim.rollout import EpisodeSpec, rollout

    ref = rollout(env, env.expert(), EpisodeSpec("tep", "base", 0, 0, 4), seconds=90.0)
    assert np.allclose(states, ref.state, atol=1e-4) and np.allclose(labels, ref.action, atol=1e-3)
    proposals = np.asarray(table.column("proposal").to_pylist())
    assert proposals.shape == labels.shape and not np.allclose(proposals, labels)  # the model's own outputs
    assert set(table.column("by_model").to_pylist()) == {0}
    # DAgger: the model drives (through the envelope); the labels are still the controller's outputs
    dag = run_shadow(plant, "plant-tiny", "tokyo", ["base"], member="chem", policy=tmp_path / "p.toml",
                     dataset="shadow-dagger", seconds=90.0, seed=4, drive="model")
    assert dag.model_applied == dag.frames == 50
    dstates = np.asarray(datasets.read(plant, "shadow-dagger", "tokyo", "monitoring").column(
        "observation.state").to_pylist())
    assert not np.allclose(dstates[5:], states[5:], atol=1e-3)  # the model took the plant elsewhere
    entry = plant.ledger.get(dag.index).entry
    assert entry.body["use"] == "shadow" and entry.body["drive"] == "model" and entry.actor == "site:tokyo"
    # the recording is training data at once: fine-tune on it
    code, out, err = run_cli(capsys, "-w", str(plant.root), "finetune", "plant-tiny", "--datasets",
                             "shadow-pure,shadow-dagger", "--name", "plant-r1", "--steps", "4", "--batch-size", "8",
                             "--site", "tokyo", "--purpose", "monitoring", "--json")
    assert code == 0, err


def test_shadow_refusals(plant: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.serve.shadow import run_shadow

    (tmp_path / "p.toml").write_text(POLICY)
    size = plant.ledger.size()
    for kwargs, needle in (({"drive": "autopilot"}, "--drive"), ({"drive": "mix", "beta": 1.5}, "--beta"),
                           ({"episodes": 0}, "--episodes")):
        with pytest.raises(ValidationError, match=needle):
            run_shadow(plant, "plant-tiny", "tokyo", ["base"], member="chem", policy=tmp_path / "p.toml",
                       dataset="x", seconds=10.0, **kwargs)  # type: ignore[arg-type]
    assert plant.ledger.size() == size  # refused before anything was decided or recorded
    with pytest.raises(PolicyDenied):  # sakai has no serve role: the model may not run next to a machine there
        run_shadow(plant, "plant-tiny", "sakai", ["base"], member="chem", policy=tmp_path / "p.toml", dataset="x",
                   seconds=10.0)
    assert "x" not in {d["name"] for d in datasets.list_datasets(plant)}
    code, _, err = run_cli(capsys, "-w", str(plant.root), "shadow", "plant-tiny", "--site", "tokyo", "--member",
                           "chem", "--policy", str(tmp_path / "p.toml"), "--as", "y", "--tasks", "idv-77")
    assert code == 1 and "idv-77" in err and "Traceback" not in err


def test_watching_over_opcua_computes_the_statistic_of_the_frames_the_plant_ran(plant: Workspace,
                                                                                tmp_path: Path) -> None:


    from onshore.serve.plant import PlantThread, SimPlant

    # a loose threshold, so that some of the few watched frames alarm
    f = monitor.fit(plant, "plant-tiny", "sakai", "normal", window=5, far=0.45)
    sim = SimPlant("tep", "base", seed=2, scan_s=0.05)
    steps = 25
    with PlantThread(sim) as pt:
        sim.write_map(tmp_path / "map.toml")
        m = sim.map_dict(nsu=False)["nodes"]
        frame_node = sim.node_id("frame")

        controller = _pi_over_opcua(pt.endpoint, m, 2 * steps)
        (tmp_path / "p.toml").write_text(POLICY)
        r = monitor.run_opcua(plant, "plant-tiny", "sakai", pt.endpoint, tmp_path / "map.toml", steps=steps,
                              seconds=120.0, frame_node=frame_node, record=("chem", tmp_path / "p.toml", "watch-opc"))
        controller.join(120)
    assert 0 < r.frames <= steps
    table = datasets.read(plant, "watch-opc", "sakai", "monitoring")
    frames = table.column("frame_index").to_pylist()
    assert frames == sorted(frames) and len(frames) == r.frames
    plant_states, plant_actions = np.asarray(sim.states), np.asarray(sim.actions)
    # each frame watched is the plant's own frame of that index, paired with the action that followed it
    assert np.allclose(np.asarray(table.column("observation.state").to_pylist()), plant_states[frames], atol=1e-3)
    assert np.allclose(np.asarray(table.column("action").to_pylist()), plant_actions[frames], atol=1e-3)
    # and the statistic is the one the monitor computes offline on those frames (afresh after a missed one)
    from onshore.workspace.models import load_model_for

    offline = monitor.Monitor(load_model_for(plant, "plant-tiny", "sakai", "read"), f)
    want, prev = [], None
    for k in frames:
        if prev is not None and k != prev + 1:
            offline.restart()
        want.append(round(offline.step(plant_states[k], plant_actions[k])[1] * 1e6))
        prev = k
    assert np.allclose(table.column("monitor_score").to_pylist(), want, rtol=1e-3, atol=50)
    # the first alarm is named by the plant's frame, as recorded and in the ledger, not by the row watched
    alarms = table.column("alarm").to_pylist()
    assert r.alarms == sum(alarms) > 0
    assert r.first_alarm == next(k for k, a in zip(frames, alarms, strict=True) if a)
    assert plant.ledger.get(r.index).entry.body["first_alarm"] == r.first_alarm


def test_shadow_over_opcua_labels_are_the_plants_controller_outputs(plant: Workspace, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.errors import OnshoreError
    from onshore.model.policy import ModelPolicy
    from onshore.serve.plant import PlantThread, SimPlant, free_port
    from onshore.serve.shadow import run_shadow_opcua
    from onshore.sim import tep
    from onshore.workspace.models import load_model_for

    (tmp_path / "p.toml").write_text(POLICY)
    sim = SimPlant("tep", "base", seed=3, scan_s=0.05)
    steps = 20
    with PlantThread(sim) as pt:
        sim.write_map(tmp_path / "map.toml")
        m = sim.map_dict(nsu=False)["nodes"]
        controller = _pi_over_opcua(pt.endpoint, m, 2 * steps)
        r = run_shadow_opcua(plant, "plant-tiny", "tokyo", pt.endpoint, tmp_path / "map.toml", member="chem",
                             policy=tmp_path / "p.toml", dataset="shadow-opc", steps=steps, seconds=120.0,
                             frame_node=sim.node_id("frame"))
        controller.join(120)
    assert 0 < r.frames <= steps and r.model_applied == 0
    table = datasets.read(plant, "shadow-opc", "tokyo", "monitoring")
    frames = table.column("frame_index").to_pylist()
    states = np.asarray(table.column("observation.state").to_pylist())
    # each frame is the plant's own frame, labelled with the action its PI controller wrote after it
    assert np.allclose(states, np.asarray(sim.states)[frames], atol=1e-3)
    assert np.allclose(np.asarray(table.column("action").to_pylist()), np.asarray(sim.actions)[frames], atol=1e-3)
    # and the proposals are the model's own on those states (its history restarted after a missed period)
    agent = ModelPolicy(load_model_for(plant, "plant-tiny", "tokyo", "serve", "monitoring"), "tennessee-eastman")
    want, prev = [], None
    for k, s in zip(frames, states, strict=True):
        if prev is None or k != prev + 1:
            agent.reset(tep.task_text("base"))
        want.append(agent.act(s.astype(np.float32)))
        prev = k
    assert np.allclose(np.asarray(table.column("proposal").to_pylist()), want, atol=1e-4)
    assert set(table.column("by_model").to_pylist()) == {0}
    assert plant.ledger.get(r.index).entry.body["endpoint"] == pt.endpoint

    # refusals: a model-driven run over OPC UA (usage), a map for another machine, an unreachable plant
    code, _, err = run_cli(capsys, "-w", str(plant.root), "shadow", "plant-tiny", "--site", "tokyo", "--member",
                           "chem", "--policy", str(tmp_path / "p.toml"), "--as", "z", "--endpoint",
                           "opc.tcp://127.0.0.1:1", "--map", str(tmp_path / "map.toml"), "--drive", "model")
    assert code == 2 and "onshore bridge" in err and "Traceback" not in err
    arm_map = tmp_path / "arm.toml"
    arm_map.write_text((tmp_path / "map.toml").read_text().replace('"tennessee-eastman"', '"sawyer-metaworld"'))
    size = plant.ledger.size()
    with pytest.raises(ValidationError, match="sawyer-metaworld"):
        run_shadow_opcua(plant, "plant-tiny", "tokyo", "opc.tcp://127.0.0.1:1", arm_map, member="chem",
                         policy=tmp_path / "p.toml", dataset="z", steps=5)
    assert plant.ledger.size() == size
    with pytest.raises(OnshoreError, match="cannot reach"):
        run_shadow_opcua(plant, "plant-tiny", "tokyo", f"opc.tcp://127.0.0.1:{free_port()}", tmp_path / "map.toml",
                         member="chem", policy=tmp_path / "p.toml", dataset="z", steps=5)
    assert "z" not in {d["name"] for d in datasets.list_datasets(plant)}
