"""The OPC UA bridge end to end on loopback: a real asyncua server runs a simulated plant (Tennessee
Eastman through tep-studio, a Meta-World task) that steps on the actions the bridge writes, the
bridge asks a real policy server, and the run comes back as a resident dataset."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
from onshore.serve.server import ServerLimits
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, models

#: The simulated plants run faster than real time (TEP's control period is minutes): let acts through.
FAST = ServerLimits(act_hz=1000.0, act_burst=50.0)
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
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        map_file = plant.write_map(tmp_path / "tep.toml")
        capsys.readouterr()
        code = main(["bridge", "opcua", "--endpoint", pt.endpoint, "--map", str(map_file), "--server", run.url,
                     "--token", tok, "--hz", "20", "--steps", "24", "--json", "--security", "none"])
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
                     "--token", "onshore_forged", "--steps", "2", "--security", "none"]) == 1
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
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run:
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


# --- issue 17: faults hold the safe action, raise the alarm, never exit leaving the last setpoint -----


def _map(plant: SimPlant, path: Path, **envelope: object) -> BridgeMap:
    import tomli_w

    d = plant.map_dict()
    d["envelope"].update(envelope)
    path.write_text(tomli_w.dumps(d))
    return BridgeMap.from_toml(path)


@pytest.mark.parametrize("fault", ["nan", "bad", "stale"])
def test_a_plant_fault_holds_the_safe_action_and_raises_the_alarm(plant_ws: Workspace, tmp_path: Path,
                                                                  fault: str) -> None:
    tok = tokens.issue(plant_ws, "tokyo", f"tep-{fault}")
    plant = SimPlant("tep", "base", seed=3, fault=fault, fault_at=6)
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        mapping = _map(plant, tmp_path / "tep.toml", max_state_age_s=0.3)
        report = asyncio.run(run_bridge(pt.endpoint, mapping, run.url, tok, hz=20, steps=24))
        assert plant.alarm  # the bridge raised the alarm node
    assert report.faults > 0 and report.interventions["fault"] > 0 and report.server_lost is None
    assert any("plant" in a for a in report.alarms), report.alarms
    written = np.stack(plant.actions)
    safe = np.array(plant.map_dict()["envelope"]["safe_action"])
    np.testing.assert_allclose(written[-1], safe)  # not the model's last setpoint
    assert not np.allclose(written[:5], safe)  # before the fault, the model drove the valves


def test_a_revoked_token_mid_run_makes_the_bridge_hold_with_its_alarm(plant_ws: Workspace, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    tok = tokens.issue(plant_ws, "tokyo", "tep-revoked")
    plant = SimPlant("tep", "base", seed=4)
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        map_file = plant.write_map(tmp_path / "tep.toml")
        timer = threading.Timer(1.0, tokens.revoke, (plant_ws, "tokyo", "tep-revoked"))
        timer.start()
        capsys.readouterr()
        code = main(["bridge", "opcua", "--endpoint", pt.endpoint, "--map", str(map_file), "--server", run.url,
                     "--token", tok, "--hz", "20", "--seconds", "3", "--json", "--security", "none"])
        timer.join()
        assert plant.alarm
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and "revoked" in report["server_lost"], report
    assert report["interventions"]["fault"] > 0 and report["written"] > report["requests"]
    written = np.stack(plant.actions)
    safe = np.array(plant.map_dict()["envelope"]["safe_action"])
    np.testing.assert_allclose(written[-5:], np.broadcast_to(safe, (5, safe.size)))


def test_wrong_node_types_and_widening_maps_are_refused_before_anything_is_written(plant_ws: Workspace,
                                                                                   tmp_path: Path) -> None:
    tok = tokens.issue(plant_ws, "tokyo", "tep-types")
    plant = SimPlant("tep", "base", seed=3)
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        mapping = _map(plant, tmp_path / "tep.toml")
        flag = mapping.estop or ""
        frame = flag.replace("estop", "frame")
        for bad, what in ((replace(mapping, state=(flag, *mapping.state[1:])), "Boolean; a state node must be"),
                          (replace(mapping, action=(frame, *mapping.action[1:])), "Int64; a action node must be"),
                          (replace(mapping, estop=mapping.state[0]), "Double; a flag node must be Boolean")):
            with pytest.raises(ValidationError, match=what):
                asyncio.run(run_bridge(pt.endpoint, bad, run.url, tok, hz=20, steps=2))
        spec = plant.emb.to_dict()
        spec["action"][0]["high"] = spec["action"][0]["high"] + 10  # wider than registered
        import tomli_w

        (tmp_path / "wide.toml").write_text(tomli_w.dumps(spec))
        with pytest.raises(ValidationError, match="would widen the registered limits"):
            asyncio.run(run_bridge(pt.endpoint, replace(mapping, embodiment_file=tmp_path / "wide.toml"), run.url,
                                   tok, hz=20, steps=2))
    assert plant.frames == 0


def test_eval_of_a_served_model_ends_with_a_clear_error_when_the_token_is_revoked_mid_run(
        plant_ws: Workspace) -> None:
    import os
    import subprocess
    import sys
    import time

    tok = tokens.issue(plant_ws, "tokyo", "evaluator-2")
    with service.start(plant_ws, "plants", "tokyo", port=0) as run:  # acts at the arm's control rate
        proc = subprocess.Popen([sys.executable, "-m", "onshore", "-w", str(plant_ws.root), "eval", "--env",
                                 "metaworld", "--tasks", "reach-v3", "--episodes", "4", "--workers", "2", "--policy",
                                 run.url, "--token", tok], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        try:
            deadline = time.monotonic() + 120
            while run.server.stats.actions < 20 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proc.poll() is None, proc.communicate()[1]
            tokens.revoke(plant_ws, "tokyo", "evaluator-2")
            _, err = proc.communicate(timeout=60)  # on the base, the pool waited here forever
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1, err
    assert "revoked" in err and "Traceback" not in err, err


@contextmanager
def _hostile_policy(plant: SimPlant, answer: str, sane: int = 3) -> Iterator[str]:
    """A policy server on 127.0.0.1 that answers ``reset`` with ``plant``'s spec and its first
    ``sane`` acts with 0.5 on every channel, then every act with ``answer``: bytes that are not
    msgpack (``garbage``) or an action array the wire format refuses (``bad_array``). Yields its URL."""
    import threading

    import msgpack
    from websockets.asyncio.server import serve as ws_serve

    from onshore.serve import wire

    async def hostile(ws) -> None:  # type: ignore[no-untyped-def]
        acts = 0
        async for frame in ws:
            msg = msgpack.unpackb(frame, raw=False)
            if msg["type"] == "reset":
                await ws.send(wire.pack({"type": "ready", "id": msg["id"], "spec": plant.emb.to_dict()}))
            elif msg["type"] == "act":
                acts += 1
                if acts <= sane:  # a sane start: the model drives the arm away from its safe action
                    action = wire.encode_array(np.full(plant.emb.action_dim, 0.5, np.float32))
                    await ws.send(wire.pack({"type": "action", "id": msg["id"], "action": action}))
                elif answer == "garbage":
                    await ws.send(b"\xc1\xc1 not msgpack")
                else:
                    await ws.send(wire.pack({"type": "action", "id": msg["id"],
                                             "action": {"dtype": "<f8", "shape": [4], "data": b"\0" * 32}}))
            else:
                await ws.send(wire.pack({"type": "ended", "id": msg["id"]}))

    box: dict = {}
    ready = threading.Event()

    async def main() -> None:
        async with ws_serve(hostile, "127.0.0.1", 0) as srv:
            box["port"] = srv.sockets[0].getsockname()[1]
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.get_running_loop().create_future()
            ready.set()
            await box["stop"]

    server = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    server.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set_result, None)
        server.join(10)


@pytest.mark.parametrize("answer", ["garbage", "bad_array"])
def test_a_policy_server_that_answers_garbage_makes_the_bridge_hold_not_exit(tmp_path: Path, answer: str) -> None:
    """A policy server that answers ``act`` with bytes that are not msgpack, or an action array the
    wire format refuses, is a server gone wrong: the bridge holds the safe action with its alarm
    raised for the rest of the run, as for a server that went away, instead of ending the run with
    the model's last setpoint left on the machine."""
    plant = SimPlant("metaworld", "reach-v3", seed=5)
    with _hostile_policy(plant, answer) as url, PlantThread(plant) as pt:
        mapping = _map(plant, tmp_path / "arm.toml")
        report = asyncio.run(run_bridge(pt.endpoint, mapping, url, "onshore_x", hz=20, steps=16))
        assert plant.alarm
    assert report.server_lost is not None and report.steps == 16, report
    assert report.interventions["fault"] > 0
    written = np.stack(plant.actions)
    safe = np.array(plant.map_dict()["envelope"]["safe_action"])
    assert not np.allclose(written[2], safe)  # the model had moved the arm
    np.testing.assert_allclose(written[-1], safe)  # the safe action, not the model's last setpoint


def test_the_e_stop_button_still_works_after_the_policy_server_is_lost(tmp_path: Path) -> None:
    """With no ``safe_action`` in the map, a lost server makes the bridge hold the last command; the
    e-stop button pressed after that must still latch and move the machine to the safe action."""
    plant = SimPlant("metaworld", "reach-v3", seed=5, estop_at=8)
    with _hostile_policy(plant, "garbage") as url, PlantThread(plant) as pt:
        d = plant.map_dict()
        del d["envelope"]["safe_action"]  # hold the last command on a fault
        import tomli_w

        (tmp_path / "arm.toml").write_text(tomli_w.dumps(d))
        report = asyncio.run(run_bridge(pt.endpoint, BridgeMap.from_toml(tmp_path / "arm.toml"), url, "onshore_x",
                                        hz=20, steps=14))
    assert report.server_lost is not None and report.estops == 1, report
    written = np.stack(plant.actions)
    np.testing.assert_allclose(written[4:7], np.full((3, 4), 0.5))  # server lost: the last command held
    np.testing.assert_allclose(written[-1], np.zeros(4))  # the button: the safe action (0 within the limits)


def test_a_plant_reading_stamped_in_the_future_is_a_fault() -> None:
    """A source timestamp far ahead of this host's clock would pass the staleness check for as long
    as the clocks disagree, a hung PLC's readings looking fresh all that time: it is a fault too."""
    import datetime as dt

    from asyncua import ua

    from onshore.serve.bridge import _plant_fault

    now = dt.datetime.now(dt.UTC)

    def reading(offset_s: float) -> ua.DataValue:
        stamp = now + dt.timedelta(seconds=offset_s)
        return ua.DataValue(ua.Variant(1.0, ua.VariantType.Double), SourceTimestamp=stamp)

    assert _plant_fault([reading(0.0), reading(0.2)], ["a", "b"], 1.0) is None  # small skew is fine
    fault = _plant_fault([reading(0.0), reading(3 * 3600)], ["a", "b"], 1.0)
    assert fault is not None and "b" in fault and "future" in fault, fault
    assert "old" in (_plant_fault([reading(-3.0)], ["a"], 1.0) or "")


def test_the_e_stop_button_latches_the_machine_at_the_server_so_a_restarted_bridge_stays_latched(
        plant_ws: Workspace, tmp_path: Path) -> None:
    """A momentary e-stop button latches the bridge; the bridge passes it on to the server, whose
    latch belongs to the machine and outlives the connection (and server restarts). A bridge
    restarted after the button was released must come up latched, not under the model's control,
    until the ``estop_reset`` node clears it."""
    from asyncua import Client as OpcClient
    from asyncua import ua

    tok = tokens.issue(plant_ws, "tokyo", "arm-latch")
    plant = SimPlant("metaworld", "reach-v3", seed=5, estop_at=4)
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        mapping = _map(plant, tmp_path / "arm.toml")
        first = asyncio.run(run_bridge(pt.endpoint, mapping, run.url, tok, hz=20, steps=8))
        assert first.estops == 1

        async def release() -> None:  # the button springs back; nobody reset the e-stop
            async with OpcClient(pt.endpoint) as c:
                button = c.get_node(plant.node_id("estop", nsu=False))
                await button.write_value(ua.Variant(False, ua.VariantType.Boolean))

        asyncio.run(release())
        before = len(plant.actions)
        second = asyncio.run(run_bridge(pt.endpoint, mapping, run.url, tok, hz=20, steps=8))
        safe = np.array(plant.map_dict()["envelope"]["safe_action"])
        written = np.stack(plant.actions[before:])

        async def reset() -> None:
            async with OpcClient(pt.endpoint) as c:
                reset_node = c.get_node(plant.node_id("estop_reset", nsu=False))
                await reset_node.write_value(ua.Variant(True, ua.VariantType.Boolean))

        asyncio.run(reset())  # the reset node clears the latch here and at the server
        third = asyncio.run(run_bridge(pt.endpoint, mapping, run.url, tok, hz=20, steps=8))
    assert second.server_lost is None and second.interventions["estop"] > 0, second
    np.testing.assert_allclose(written[1:], np.broadcast_to(safe, written[1:].shape))
    assert third.server_lost is None and not np.allclose(plant.actions[-1], safe)  # the model drives again
    events = [(b["event"], b["by"]) for b in (e.entry.body for e in plant_ws.ledger.entries(kinds=["model.serve"]))
              if b.get("client") == "arm-latch" and b.get("event") in ("estop", "estop_reset")]
    assert events == [("estop", "arm-latch"), ("estop_reset", "estop_reset node (client arm-latch)")], events


# --- issue 21: OPC UA the way plant engineers expect ---------------------------------------------------


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One of asyncua's own command-line tools (installed beside it), run against a loopback server."""
    return subprocess.run([str(Path(sys.executable).parent / name), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _owner_only(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_secured_plant_driven_by_the_cli_bridge_and_browsed_with_asyncuas_own_tools(
        plant_ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Basic256Sha256 with Sign and SignAndEncrypt, application certificates on both sides, a user
    who may write; anonymous sessions may browse but not act; ``uals`` and ``uaread`` see channel-
    named nodes in the plant's namespace with their engineering units and ranges."""
    tok = tokens.issue(plant_ws, "tokyo", "secure-bridge")
    plant = SimPlant("tep", "base", seed=3, security="sign", pki=tmp_path / "plant-pki",
                     users={"line-3-bridge": "correct horse battery"})
    creds = _owner_only(tmp_path / "bridge-user.toml",
                        'username = "line-3-bridge"\npassword = "correct horse battery"\n')
    wrong = _owner_only(tmp_path / "wrong-user.toml", 'username = "line-3-bridge"\npassword = "guess"\n')
    bridge_pki = tmp_path / "bridge-pki"
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        assert plant.certificate is not None
        map_file = plant.write_map(tmp_path / "tep.toml")
        assert "nsu=urn:onshore:sim-plant;s=plant/state/reactor_pressure" in map_file.read_text()

        def bridge(*extra: str) -> tuple[int, str, str]:
            capsys.readouterr()
            code = main(["bridge", "opcua", "--endpoint", pt.endpoint, "--map", str(map_file), "--server", run.url,
                         "--token", tok, "--hz", "20", "--steps", "6", "--pki", str(bridge_pki), *extra])
            out, err = capsys.readouterr()
            return code, out, err

        written = 0
        for mode in ("sign-encrypt", "sign"):
            code, out, err = bridge("--security", mode, "--credentials", str(creds), "--server-cert",
                                    str(plant.certificate.cert), "--json")
            assert code == 0, err
            report = json.loads(out)
            assert report["written"] > 0 and report["server_lost"] is None, report
            written += report["written"]
        assert plant.frames == written  # every command the secured sessions wrote stepped the plant
        before = plant.frames
        code, _, err = bridge("--security", "sign-encrypt")  # anonymous: may look, may not act
        assert code == 1 and "refused this session's write" in err and "Traceback" not in err, err
        code, _, err = bridge("--security", "sign-encrypt", "--credentials", str(wrong))
        assert code == 1 and "BadUserAccessDenied" in err and "--credentials" in err and "Traceback" not in err, err
        code, _, err = bridge("--security", "sign-encrypt", "--credentials", str(creds), "--server-cert",
                              str(bridge_pki / "bridge-cert.der"))  # pinned to a certificate not the plant's
        assert code == 1 and "check that it is this server's certificate" in err and "Traceback" not in err, err
        assert plant.frames == before

        # the bridge's application certificate: made once in --pki, key owner-only, ApplicationUri in its SAN
        from cryptography import x509

        cert = x509.load_der_x509_certificate((bridge_pki / "bridge-cert.der").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert any(u.endswith(":onshore:bridge") for u in san.get_values_for_type(x509.UniformResourceIdentifier))
        assert (bridge_pki / "bridge-key.pem").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "plant-pki" / "sim-plant-key.pem").stat().st_mode & 0o777 == 0o600

        # asyncua's own tools, over SignAndEncrypt with a certificate of their own, anonymously
        from onshore.serve.opcua import application_certificate

        mine = application_certificate(tmp_path / "tool-pki", "uals", "urn:onshore-test:uals")
        sec = ["--security", f"Basic256Sha256,SignAndEncrypt,{mine.cert},{mine.key}"]
        ns = plant.node_id("x", nsu=False).split(";")[0].removeprefix("ns=")
        top = _tool("uals", "-u", pt.endpoint, "-n", plant.node_id("", nsu=False).rstrip("/"), "-l", *sec)
        assert top.returncode == 0, top.stderr
        for name in ("state", "action", "estop", "estop_reset", "alarm", "frame"):
            assert f"{ns}:{name} " in top.stdout, top.stdout  # BrowseNames in the plant's namespace, not 0
        states = _tool("uals", "-u", pt.endpoint, "-n", plant.node_id("state", nsu=False), "-l", *sec)
        assert states.returncode == 0, states.stderr
        for c in plant.emb.state:
            assert f"ns={ns};s=plant/state/{c.name} " in states.stdout and f"{ns}:{c.name} " in states.stdout
        props = _tool("uals", "-u", pt.endpoint, "-n", plant.node_id("state/reactor_temperature", nsu=False), "-l",
                      *sec)
        assert "0:EURange" in props.stdout and "0:EngineeringUnits" in props.stdout, props.stdout
        unit = _tool("uaread", "-u", pt.endpoint, "-n",
                     plant.node_id("state/reactor_temperature/EngineeringUnits", nsu=False), *sec)
        assert "UnitId=4408652" in unit.stdout and "degC" in unit.stdout, unit.stdout  # UNECE CEL
        valve = plant.emb.action[0]
        rng = _tool("uaread", "-u", pt.endpoint, "-n", plant.node_id(f"action/{valve.name}/EURange", nsu=False), *sec)
        assert f"Range(Low={valve.low}, High={valve.high})" in rng.stdout, rng.stdout
        uris = _tool("uaread", "-u", pt.endpoint, "-n", "i=2255", *sec)  # Server.NamespaceArray
        assert ":onshore:sim-plant'" in uris.stdout and "'urn:onshore:sim-plant'" in uris.stdout, uris.stdout
        # what the bridge last wrote is what the plant shows on its action node
        last = _tool("uaread", "-u", pt.endpoint, "-n", plant.node_id(f"action/{valve.name}", nsu=False), *sec)
        assert float(last.stdout.strip()) == pytest.approx(plant.actions[-1][0]), last.stdout
        # an anonymous write to the e-stop is refused, and changes nothing
        press = _tool("uawrite", "-u", pt.endpoint, "-n", plant.node_id("estop", nsu=False), "-t", "bool", *sec, "true")
        assert "BadUserAccessDenied" in press.stdout + press.stderr
        estop = _tool("uaread", "-u", pt.endpoint, "-n", plant.node_id("estop", nsu=False), *sec)
        assert estop.stdout.strip() == "False", estop.stdout
        # no unsecured endpoint at all
        assert _tool("uals", "-u", pt.endpoint, "-n", "i=85").returncode != 0
        # a watcher (onshore monitor, onshore shadow) only reads: an anonymous SignAndEncrypt session does
        from contextlib import aclosing

        from onshore.serve.opcua import Security
        from onshore.serve.watch import watch

        async def look() -> list:
            anonymous = Security("sign-encrypt", tmp_path / "watch-pki")
            async with aclosing(watch(pt.endpoint, BridgeMap.from_toml(map_file), 50.0, steps=2, seconds=20,
                                      frame_node=None, security=anonymous)) as it:
                return [f async for f in it]

        frames = asyncio.run(look())
        assert len(frames) == 2 and np.allclose(frames[-1].state, plant.states[-1])
        np.testing.assert_allclose(frames[-1].action, plant.actions[-1])
    assert plant.frames == before


def test_security_none_must_be_asked_for_and_stays_on_loopback(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.serve.opcua import Credentials, application_certificate, check_security, read_users

    check_security("opc.tcp://127.0.0.1:4840/x", "none")
    check_security("opc.tcp://localhost:4840", "none")
    for host in ("192.0.2.10", "plc.line3", "0.0.0.0"):
        with pytest.raises(ValidationError, match="not loopback"):
            check_security(f"opc.tcp://{host}:4840", "none")
    check_security("opc.tcp://192.0.2.10:4840", "sign-encrypt")
    plant_map = tmp_path / "m.toml"
    plant_map.write_text('embodiment = "e"\ntask = "t"\n[nodes]\nstate = ["ns=2;s=a"]\naction = ["ns=2;s=b"]\n')
    base = ["bridge", "opcua", "--map", str(plant_map), "--server", "ws://127.0.0.1:9", "--token", "t", "--steps", "1"]
    for extra, why in ((["--endpoint", "opc.tcp://192.0.2.10:4840", "--security", "none"], "not loopback"),
                       (["--endpoint", "opc.tcp://192.0.2.10:4840"], "needs --pki"),  # the default is secured
                       (["--endpoint", "opc.tcp://127.0.0.1:9", "--security", "plaintext"], "use one of")):
        capsys.readouterr()
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code in (1, 2) and why in err and "Traceback" not in err, err
    capsys.readouterr()
    assert main(["sim", "plant", "--env", "tep", "--task", "base", "--host", "0.0.0.0", "--security", "none"]) == 1
    assert "not loopback" in capsys.readouterr().err
    assert main(["sim", "plant", "--env", "tep", "--task", "base", "--port", "9"]) == 1  # secured by default
    assert "needs --pki" in capsys.readouterr().err

    # credentials: a file only its owner reads, or both environment variables; never half
    loose = tmp_path / "user.toml"
    loose.write_text('username = "u"\npassword = "p"\n')
    loose.chmod(0o644)
    with pytest.raises(ValidationError, match="chmod 600"):
        Credentials.from_file(loose)
    loose.chmod(0o600)
    assert Credentials.from_file(loose) == Credentials("u", "p") and "p" not in repr(Credentials("u", "p"))
    assert Credentials.from_env({"ONSHORE_OPCUA_USER": "u", "ONSHORE_OPCUA_PASSWORD": "p"}) == Credentials("u", "p")
    assert Credentials.from_env({}) is None
    with pytest.raises(ValidationError, match="both"):
        Credentials.from_env({"ONSHORE_OPCUA_USER": "u"})

    # a server's users: an owner-only [users] table; never with --security none
    users = tmp_path / "users.toml"
    users.write_text('[users]\nline-3 = "pw"\n')
    users.chmod(0o640)
    with pytest.raises(ValidationError, match="chmod 600"):
        read_users(users)
    users.chmod(0o600)
    assert read_users(users) == {"line-3": "pw"}
    capsys.readouterr()
    assert main(["sim", "plant", "--env", "tep", "--task", "base", "--security", "none", "--users", str(users)]) == 2
    assert "passwords never travel unencrypted" in capsys.readouterr().err

    # application certificates: made once, reused, never overwritten; a key others read is refused
    first = application_certificate(tmp_path / "pki", "bridge", "urn:h:onshore:bridge")
    assert (tmp_path / "pki").stat().st_mode & 0o777 == 0o700 and first.key.stat().st_mode & 0o777 == 0o600
    der = first.cert.read_bytes()
    assert application_certificate(tmp_path / "pki", "bridge", "urn:h:onshore:bridge").cert.read_bytes() == der
    with pytest.raises(ValidationError, match="made for ApplicationUri"):
        application_certificate(tmp_path / "pki", "bridge", "urn:other:onshore:bridge")
    first.key.chmod(0o644)
    with pytest.raises(ValidationError, match="chmod 600"):
        application_certificate(tmp_path / "pki", "bridge", "urn:h:onshore:bridge")
    assert first.cert.read_bytes() == der


def test_a_mistyped_node_id_says_which_node_was_not_found(plant_ws: Workspace, tmp_path: Path) -> None:
    """Maps by ``ns=`` index (the old form) still work; ``nsu=`` is resolved against the server; a
    node the server does not have, a namespace it does not have, a node id that does not parse:
    each refused before anything is written, naming the node and its role."""
    import tomli_w

    tok = tokens.issue(plant_ws, "tokyo", "tep-typo")
    plant = SimPlant("tep", "base", seed=3)
    with service.start(plant_ws, "plants", "tokyo", port=0, limits=FAST) as run, PlantThread(plant) as pt:
        async def type_of(node_id: str) -> int:
            from asyncua import Client as OpcClient

            async with OpcClient(pt.endpoint) as c:
                return (await c.get_node(node_id).read_type_definition()).Identifier

        assert asyncio.run(type_of(plant.node_id("state/reactor_level", nsu=False))) == 2368  # AnalogItemType
        (tmp_path / "ns.toml").write_text(tomli_w.dumps(plant.map_dict(nsu=False)))
        by_index = BridgeMap.from_toml(tmp_path / "ns.toml")
        assert by_index.state[0].startswith("ns=")
        report = asyncio.run(run_bridge(pt.endpoint, by_index, run.url, tok, hz=20, steps=3))
        assert report.written > 0 and plant.frames == report.written
        before = plant.frames
        mapping = BridgeMap.from_toml(plant.write_map(tmp_path / "nsu.toml"))
        typo = mapping.state[7].replace("reactor_level", "reactor_levle")
        with pytest.raises(ValidationError, match=r"reactor_levle \(state\) was not found on the server"):
            asyncio.run(run_bridge(pt.endpoint, replace(mapping, state=(*mapping.state[:7], typo,
                                                                        *mapping.state[8:])), run.url, tok, steps=1))
        with pytest.raises(ValidationError, match=r"urn:nope.*does not have"):
            asyncio.run(run_bridge(pt.endpoint, replace(mapping, estop="nsu=urn:nope;s=plant/estop"), run.url, tok,
                                   steps=1))
    assert plant.frames == before
    d = plant.map_dict()
    d["nodes"]["action"][1] = "ns=2;q=oops"
    (tmp_path / "bad.toml").write_text(tomli_w.dumps(d))
    with pytest.raises(ValidationError, match=r"bad.toml: \[nodes\] action: 'ns=2;q=oops' is not an OPC UA node id"):
        BridgeMap.from_toml(tmp_path / "bad.toml")
