"""The policy server on 127.0.0.1: loading decided and digest-checked, tokens, hostile clients,
concurrency, answers equal to the model acting in process, runs recorded as resident data."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from _serving import EMBODIMENT, MODEL, TASK, furnace_workspace
from onshore.cli.app import main
from onshore.errors import IntegrityError, PolicyDenied
from onshore.model.policy import ModelPolicy
from onshore.serve import Client, ServeError, service, tokens, wire
from onshore.serve import envelope as E
from onshore.serve.loading import load_served_model
from onshore.serve.plant import free_port
from onshore.serve.record import DEADLINE_MISSES, INTERVENTIONS, RecordOptions
from onshore.workspace import Workspace, datasets, models
from onshore.workspace.registry import get_embodiment

STATE = np.array([600.0, 640.0, 4.0], dtype=np.float32)


@pytest.fixture(scope="module")
def served_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = furnace_workspace(tmp_path_factory.mktemp("serve"))
    yield ws
    ws.close()


@pytest.fixture(scope="module")
def running(served_ws: Workspace) -> Iterator[service.Running]:
    with service.start(served_ws, MODEL, "tokyo", port=0) as run:
        yield run


@pytest.fixture(scope="module")
def token(served_ws: Workspace, running: service.Running) -> str:
    value = tokens.issue(served_ws, "tokyo", "line-1")
    running.server.tokens.refresh()  # the server does this every second by itself
    return value


def raw(url: str, tok: str) -> object:
    return connect(url, additional_headers={"Authorization": f"Bearer {tok}"}, max_size=wire.HARD_FRAME, legacy=True)


def ask(ws: object, msg: object) -> dict:
    ws.send(msg if isinstance(msg, bytes | str) else msgpack.packb(msg, use_bin_type=True))  # type: ignore[attr-defined]
    return msgpack.unpackb(ws.recv(timeout=10), raw=False)  # type: ignore[attr-defined]


def test_serving_is_decided_and_refused_where_the_data_forbids(served_ws: Workspace) -> None:
    ws = served_ws
    start = ws.ledger.size()
    with pytest.raises(PolicyDenied) as e:  # sakai holds the model, stores and computes, but does not serve
        load_served_model(ws, MODEL, "sakai")
    assert "workspace/role-serve" in e.value.rules
    with pytest.raises(PolicyDenied) as e:  # not a purpose the furnace data was given for
        load_served_model(ws, MODEL, "tokyo", "advertising")
    assert any("furnace" in r and "purposes" in r for r in e.value.rules), e.value.rules
    decisions = [x.entry.body for x in ws.ledger.entries(start) if x.entry.kind == "decision"]
    assert [d["request"]["action"] for d in decisions] == ["serve", "serve"]
    assert all(d["decision"] == "deny" for d in decisions)
    assert main(["-w", str(ws.root), "serve", MODEL, "--site", "sakai", "--port", "0"]) == 3
    served = load_served_model(ws, MODEL, "tokyo")
    assert served.digest == models.get_model(ws, MODEL)["files"]["model.safetensors"]
    assert list(served.embodiments) == [EMBODIMENT]


def test_a_model_whose_files_differ_from_the_ledger_is_not_served(served_ws: Workspace, tmp_path: Path) -> None:
    row = models.get_model(served_ws, MODEL)
    files = sorted(p for p in models.model_folder(served_ws, row, "tokyo").iterdir() if p.is_file())
    assert files
    for f in files:
        saved = f.read_bytes()
        try:
            f.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
            with pytest.raises(IntegrityError):
                load_served_model(served_ws, MODEL, "tokyo")
        finally:
            f.write_bytes(saved)
    assert load_served_model(served_ws, MODEL, "tokyo").digest == row["files"]["model.safetensors"]


def test_a_withdrawn_dataset_stops_serving_naming_it(tmp_path: Path) -> None:
    ws = furnace_workspace(tmp_path)
    try:
        datasets.withdraw(ws, "furnace", "steelco")
        with pytest.raises(PolicyDenied) as e:
            load_served_model(ws, MODEL, "tokyo")
        assert any("furnace" in r for r in e.value.rules) and "furnace" in str(e.value), e.value
        assert main(["-w", str(ws.root), "serve", MODEL, "--site", "tokyo", "--port", "0"]) == 3
    finally:
        ws.close()


def test_health_and_tokens_refused_unless_live_for_this_site(running: service.Running, served_ws: Workspace,
                                                              token: str, caplog: pytest.LogCaptureFixture) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.port}/healthz", timeout=10) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["digest"] == running.served.digest
    other_site = tokens.issue(served_ws, "sakai", "line-9")
    running.server.tokens.refresh()  # the server does this every second by itself
    refused_before = running.server.stats.refused
    with caplog.at_level(logging.WARNING, logger="onshore.serve"):
        for bad in (None, "onshore_not-a-token", other_site):
            with pytest.raises(ServeError) as e:
                Client(running.url, bad or "", EMBODIMENT)
            assert e.value.code == "unauthorized" and "401" in str(e.value)
    assert running.server.stats.refused == refused_before + 3
    assert sum("refused" in r.message for r in caplog.records) >= 3
    assert any("token issued for site sakai" in r.message for r in caplog.records)
    with Client(running.url, token, EMBODIMENT) as c:  # the real token works
        assert c.info()["digest"] == running.served.digest


def test_revoked_token_is_refused_even_on_an_open_connection(running: service.Running, served_ws: Workspace) -> None:
    tok = tokens.issue(served_ws, "tokyo", "temp-contractor")
    running.server.tokens.refresh()
    c = Client(running.url, tok, EMBODIMENT)
    c.reset(TASK)
    c.act(STATE)
    assert main(["-w", str(served_ws.root), "serve", "revoke", "--site", "tokyo", "--client", "temp-contractor"]) == 0
    running.server.tokens.refresh()  # the server does this every second by itself
    with pytest.raises(ServeError) as e:
        c.act(STATE)
    assert e.value.code in ("unauthorized", "closed")
    with pytest.raises(ServeError, match="401"):
        Client(running.url, tok, EMBODIMENT)
    assert [r for r in tokens.list_tokens(served_ws, "tokyo") if r["client"] == "temp-contractor"][0]["revoked_at"]


def test_malformed_requests_get_error_replies_and_the_session_goes_on(running: service.Running, token: str) -> None:
    ws = raw(running.url, token)
    good_state = wire.encode_array(STATE)
    cases = [
        ({"type": "act", "id": 1, "state": good_state}, "no_session"),
        ({"type": "reset", "id": 2, "embodiment": "crane-7", "task": TASK}, "unknown_embodiment"),
        ({"type": "reset", "id": 3, "embodiment": 7, "task": TASK}, "bad_message"),
        ({"type": "launch", "id": 4}, "bad_message"),
        ([1, 2, 3], "bad_message"),
        (b"\xc1\xff not msgpack", "bad_frame"),
        (msgpack.packb({"type": "info", "x": msgpack.ExtType(1, b"evil")}), "bad_frame"),
        ("a text frame", "bad_frame"),
        (b"\x00" * (wire.MAX_FRAME + 1), "too_large"),
    ]
    for msg, code in cases:
        reply = ask(ws, msg)
        assert reply["type"] == "error" and reply["code"] == code, (msg if not isinstance(msg, bytes) else code, reply)
    assert ask(ws, {"type": "reset", "id": 5, "embodiment": EMBODIMENT, "task": TASK})["type"] == "ready"
    bad_acts = [
        (wire.encode_array(np.zeros(4, np.float32)), "bad_state"),  # wrong width
        (wire.encode_array(np.array([1.0, np.nan, 2.0], np.float32)), "bad_state"),
        (wire.encode_array(np.array([1.0, np.inf, 2.0], np.float32)), "bad_state"),
        ({"dtype": "<f8", "shape": [3], "data": np.zeros(3).tobytes()}, "bad_message"),  # float64
        ({"dtype": "<f4", "shape": [3], "data": b"\x00" * 8}, "bad_message"),  # short data
        ([600.0, 640.0, 4.0], "bad_message"),  # a plain list, not an array map
        ("600,640,4", "bad_message"),
    ]
    for state, code in bad_acts:
        reply = ask(ws, {"type": "act", "id": 6, "state": state})
        assert reply["code"] == code and reply["id"] == 6, reply
    assert ask(ws, {"type": "act", "id": 7, "state": good_state, "deadline_misses": "many"})["code"] == "bad_message"
    ok = ask(ws, {"type": "act", "id": 8, "state": good_state})
    assert ok["type"] == "action" and ok["id"] == 8 and wire.decode_array(ok["action"], "a").shape == (2,)
    ws.close()
    from websockets.exceptions import ConnectionClosedError

    ws2 = raw(running.url, token)
    with pytest.raises(ConnectionClosedError) as closed:  # over the hard limit the WebSocket layer closes
        ws2.send(b"\x00" * (wire.HARD_FRAME + 10))
        ws2.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with urllib.request.urlopen(f"http://127.0.0.1:{running.port}/healthz", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_a_flood_is_answered_rate_limited_while_another_client_is_served(running: service.Running,
                                                                         token: str) -> None:
    flood = raw(running.url, token)
    info = msgpack.packb({"type": "info", "id": 1})
    for _ in range(1500):
        flood.send(info)
    with Client(running.url, token, EMBODIMENT) as calm:
        calm.reset(TASK)
        assert calm.act(STATE).shape == (2,)
    replies = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            replies.append(msgpack.unpackb(flood.recv(timeout=2), raw=False))
        except TimeoutError:
            break
    codes = [r.get("code") for r in replies]
    assert "rate_limited" in codes
    assert len(replies) < 1500  # the rest were dropped unanswered
    assert running.server.stats.dropped > 0
    flood.close()


def test_ten_concurrent_clients_get_what_the_model_does_in_process(running: service.Running, served_ws: Workspace,
                                                                   token: str) -> None:
    loaded = models.load_model_for(served_ws, MODEL, "tokyo", "serve", "fine-tuning")
    emb = get_embodiment(served_ws, EMBODIMENT)
    rng = np.random.default_rng(3)
    states = [rng.uniform([0, 0, 0], [1400, 1400, 25], size=(12, 3)).astype(np.float32) for _ in range(10)]
    pace = 0.2  # two control periods: every step is one period's worth of max_rate, whatever the jitter
    expected = []
    for seq in states:  # the same model and the same envelope, in this process
        p, env = ModelPolicy(loaded, EMBODIMENT), E.Envelope(E.Limits.from_embodiment(emb))
        p.reset(TASK)
        expected.append([env.command(p.act(s), now=k * pace).action.astype(np.float32) for k, s in enumerate(seq)])
    got: list[list[np.ndarray] | Exception] = [[] for _ in states]
    # one machine per client: an envelope belongs to a client and embodiment
    toks = [tokens.issue(served_ws, "tokyo", f"cell-{i}") for i in range(10)]
    running.server.tokens.refresh()

    def drive(i: int) -> None:
        try:
            with Client(running.url, toks[i], EMBODIMENT) as c:
                c.reset(TASK)
                got[i] = []
                t0 = time.monotonic()
                for k, s in enumerate(states[i]):
                    time.sleep(max(0.0, t0 + k * pace - time.monotonic()))
                    got[i].append(c.act(s))
        except Exception as e:  # reported below
            got[i] = e

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(10):
        assert not isinstance(got[i], Exception), got[i]
        np.testing.assert_allclose(np.stack(got[i]), np.stack(expected[i]), rtol=1e-5, atol=1e-4)


def test_a_run_comes_back_as_a_resident_dataset_tied_to_the_model(tmp_path: Path) -> None:
    ws = furnace_workspace(tmp_path)
    try:
        tok = tokens.issue(ws, "tokyo", "line-1")
        record = RecordOptions(tmp_path / "record-policy.toml", "steelco", "furnace-run-1")
        with service.start(ws, MODEL, "tokyo", port=0, record=record) as run:
            for _episode in range(2):
                with Client(run.url, tok, EMBODIMENT) as c:
                    c.reset(TASK, initial_action=np.array([0.0, 0.0], np.float32))
                    for k in range(5):
                        time.sleep(0.11)  # at the control rate (10 Hz): faster acts are rate_limited
                        a = c.act(STATE, deadline_misses=k, bridge_interventions=0)
                    assert c.last["counts"]["rate"] >= 1  # from 0 % the model's command is ramped at max_rate
                    # the second episode starts from where the first left the machine, not from initial_action
                    assert a[0] <= 5 * 0.5 * (_episode + 1) + 1e-4
        report = run.report
        assert report is not None and report.actions == 10
        assert [r["dataset"] for r in report.recorded] == ["furnace-run-1"]
        table = datasets.read(ws, "furnace-run-1", "tokyo", purpose="fine-tuning").to_pydict()
        assert len(table["episode_index"]) == 10 and set(table["episode_index"]) == {0, 1}
        assert table[DEADLINE_MISSES][:5] == [0, 1, 2, 3, 4]
        assert any(v & E.bits([E.RATE]) for v in table[INTERVENTIONS])
        np.testing.assert_allclose(table["observation.state"][0], STATE)
        entries = {e.index: e.entry for e in ws.ledger.entries(report.start_index)}
        start, stop = entries[report.start_index], entries[report.stop_index]
        assert start.kind == stop.kind == "model.serve" and start.actor == "site:tokyo"
        assert start.body["event"] == "start" and stop.body["event"] == "stop"
        assert start.body["digest"] == stop.body["digest"] == run.served.digest
        assert stop.body["recorded"][0]["dataset"] == "furnace-run-1"
        ingest = entries[stop.body["recorded"][0]["ledger_index"]]
        assert ingest.kind == "data.ingest" and ingest.body["dataset"] == "furnace-run-1"
        assert ingest.body["site"] == "tokyo" and ingest.body["owner"] == "steelco"
        assert not (Path(tmp_path) / "ws" / "sites" / "tokyo" / "runs" / ".spool" / run.server.recorder.run_id
                    ).exists()
    finally:
        ws.close()


def test_cli_serves_until_sigterm_and_issues_tokens(served_ws: Workspace) -> None:
    root = str(served_ws.root)
    out = subprocess.run([sys.executable, "-m", "onshore", "-w", root, "serve", "token", "--site", "tokyo",
                          "--client", "cli-line"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip()
    assert tok.startswith(tokens.PREFIX) and "shown once" in out.stderr
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "onshore", "-w", root, "serve", MODEL, "--site", "tokyo",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert json.loads(r.read())["model"] == MODEL
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.3)
        with Client(f"ws://127.0.0.1:{port}", tok, EMBODIMENT) as c:
            c.reset(TASK)
            assert c.act(STATE).shape == (2,)
        with pytest.raises(ServeError, match="401"):
            Client(f"ws://127.0.0.1:{port}", None, EMBODIMENT)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "1 action(s)" in stdout and "1 refused" in stdout
    assert "refused" in stderr  # the refusal is logged


# --- issue 17: the envelope belongs to the machine; floods; clients never hang ----------------------


def _serve_entries(ws: Workspace, start: int, event: str) -> list[dict]:
    return [e.entry.body for e in ws.ledger.entries(start) if e.entry.kind == "model.serve"
            and e.entry.body["event"] == event]


def test_e_stop_stays_latched_across_reset_and_reconnect_until_reset_estop_recorded(
        running: service.Running, served_ws: Workspace) -> None:
    tok = tokens.issue(served_ws, "tokyo", "press-4")
    running.server.tokens.refresh()
    start = served_ws.ledger.size()
    with Client(running.url, tok, EMBODIMENT) as c:
        c.reset(TASK)
        c.act(STATE)
        c.estop("guard door open")
        time.sleep(0.11)
        c.reset(TASK)  # a new episode does not clear it
        time.sleep(0.11)
        c.act(STATE)
        assert c.last["estopped"] and E.ESTOP in c.last["interventions"]
    with Client(running.url, tok, EMBODIMENT) as c:  # nor does a reconnect
        c.reset(TASK)
        c.act(STATE)
        assert c.last["estopped"] and "guard door open" in c.last["alarm"]
        assert c.reset_estop(by="operator ito")["by"] == "operator ito (client press-4)"
        time.sleep(0.11)
        c.act(STATE)
        assert not c.last["estopped"]
    latched, reset = _serve_entries(served_ws, start, "estop"), _serve_entries(served_ws, start, "estop_reset")
    assert [(b["client"], b["reason"]) for b in latched] == [("press-4", "guard door open")]
    assert [(b["client"], b["by"], b["reason"]) for b in reset] == [("press-4", "operator ito (client press-4)",
                                                                     "guard door open")]
    assert reset[0]["digest"] == running.served.digest


def test_a_running_server_re_decides_when_the_day_changes(running: service.Running, served_ws: Workspace) -> None:
    """Policies expire with the calendar, not only with ledger appends: a server running past its
    data's ``expires`` date (2031-03-31 in the furnace policy) is refused on the first poll of that day."""
    day = [dt.date(2031, 3, 31)]
    recheck = service.Recheck(served_ws, running.served, today=lambda: day[0])
    start = served_ws.ledger.size()
    assert recheck() is None and recheck() is None  # allowed, and nothing recorded while it is
    day[0] = dt.date(2031, 4, 1)
    refusal = recheck()
    assert refusal is not None and "dataset/furnace/expiry" in refusal, refusal
    decisions = [e.entry.body for e in served_ws.ledger.entries(start) if e.entry.kind == "decision"]
    assert len(decisions) == 1 and decisions[0]["decision"] == "deny"


def test_a_refusal_whose_decision_cannot_be_recorded_still_refuses(running: service.Running, served_ws: Workspace,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: a deny seen while the ledger is too busy to take its ``decision`` entry must
    still stop serving, not be forgotten (the change was already consumed, so no later poll would
    re-decide it)."""
    from onshore.errors import LockTimeout

    day = [dt.date(2031, 3, 31)]
    recheck = service.Recheck(served_ws, running.served, today=lambda: day[0])
    assert recheck() is None
    day[0] = dt.date(2031, 4, 1)  # the furnace data expires: serving is denied from now on

    def busy(*args: object, **kw: object) -> int:
        raise LockTimeout("ledger busy (test)")

    monkeypatch.setattr(served_ws, "record", busy)
    refusals = []
    for _ in range(3):  # the watch task calls again after an exception
        try:
            refusals.append(recheck())
        except Exception:  # noqa: BLE001 - what the server's watch task does too
            refusals.append(None)
    assert refusals[0] is not None and "dataset/furnace/expiry" in refusals[0] and "not recorded" in refusals[0], \
        refusals


def test_a_latched_e_stop_survives_a_restart_of_the_server(served_ws: Workspace) -> None:
    """The latch is in the ledger, not only in the server's memory: a server started after one that
    latched (a crash, a restart, another model) starts that machine latched, until reset_estop."""
    tok = tokens.issue(served_ws, "tokyo", "press-9")
    with service.start(served_ws, MODEL, "tokyo", port=0) as first, Client(first.url, tok, EMBODIMENT) as c:
        c.reset(TASK)
        c.estop("light curtain broken")
    with service.start(served_ws, MODEL, "tokyo", port=0) as second:
        with Client(second.url, tok, EMBODIMENT) as c:
            c.reset(TASK)
            c.act(STATE)
            assert c.last["estopped"] and "light curtain broken" in c.last["alarm"]
            c.reset_estop(by="operator sato")
    with service.start(served_ws, MODEL, "tokyo", port=0) as third, Client(third.url, tok, EMBODIMENT) as c:
        c.reset(TASK)
        c.act(STATE)
        assert not c.last["estopped"]  # the recorded reset cleared it for good
    assert service.latched_estops(served_ws, "tokyo").get(("press-9", EMBODIMENT)) is None


def test_e_stop_records_reach_the_ledger_in_the_order_the_latch_changed(running: service.Running,
                                                                       served_ws: Workspace) -> None:
    """Two sessions of one machine: one resets the e-stop while the other latches it again. The
    records must say what the latch did, in that order; a reset recorded after the second latch
    (the reset's write was slower) would unlatch the machine at the next server start."""
    import asyncio

    from onshore.serve.server import PolicyServer

    recorded: list[dict] = []

    def sink(body: dict) -> None:  # a ledger write; the reset's is the slow one here
        if body["event"] == "estop_reset":
            time.sleep(0.5)
        recorded.append(body)

    tok = tokens.issue(served_ws, "tokyo", "press-12")
    running.server.tokens.refresh()
    server = PolicyServer(running.served, running.server.tokens, on_event=sink)
    loop = asyncio.new_event_loop()
    port = loop.run_until_complete(server.start("127.0.0.1", 0))
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        url = f"ws://127.0.0.1:{port}"
        with Client(url, tok, EMBODIMENT) as a, Client(url, tok, EMBODIMENT) as b:
            a.reset(TASK)
            b.reset(TASK)
            a.estop("first")
            resetting = threading.Thread(target=b.reset_estop, kwargs={"by": "operator"}, daemon=True)
            resetting.start()
            time.sleep(0.15)  # the reset is applied, its record still being written
            a.estop("second")
            resetting.join(10)
            time.sleep(0.11)
            a.act(STATE)
            assert a.last["estopped"]  # latched again in memory
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
    assert [b["event"] for b in recorded] == ["estop", "estop_reset", "estop"], recorded


def test_the_first_command_after_reset_is_limited_from_the_last_one_applied(running: service.Running,
                                                                            served_ws: Workspace) -> None:
    tok = tokens.issue(served_ws, "tokyo", "press-5")
    running.server.tokens.refresh()
    with Client(running.url, tok, EMBODIMENT) as c:
        c.reset(TASK, initial_action=np.zeros(2, np.float32))
        before = c.act(STATE)
        assert before[0] <= 0.5 + 1e-4 and before[1] <= 1.0 + 1e-4  # fuel 5 %/s, air 10 %/s at 10 Hz, from 0
        c.reset(TASK, initial_action=np.array([90.0, 70.0], np.float32))  # a claim, not the machine's history
        time.sleep(0.11)
        after = c.act(STATE)
        assert abs(after[0] - before[0]) <= 0.5 + 1e-4 and abs(after[1] - before[1]) <= 1.0 + 1e-4, (before, after)


def test_acting_faster_than_the_control_rate_is_rate_limited_not_queued(running: service.Running,
                                                                       served_ws: Workspace) -> None:
    tok = tokens.issue(served_ws, "tokyo", "press-6")
    running.server.tokens.refresh()
    ws = raw(running.url, tok)
    assert ask(ws, {"type": "reset", "id": 1, "embodiment": EMBODIMENT, "task": TASK})["type"] == "ready"
    t0 = time.monotonic()
    replies = [ask(ws, {"type": "act", "id": 2 + k, "state": wire.encode_array(STATE)}) for k in range(20)]
    elapsed = time.monotonic() - t0
    served = [r for r in replies if r["type"] == "action"]
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    assert len(served) + len(limited) == 20  # every request answered at once, none queued
    assert len(served) <= 2 + 10 * elapsed + 1 and limited, (len(served), elapsed)
    assert "control rate" in limited[0]["message"]
    ws.close()


def test_connections_are_limited_per_token_as_well_as_per_server(running: service.Running,
                                                                 served_ws: Workspace) -> None:
    greedy, other = tokens.issue(served_ws, "tokyo", "greedy"), tokens.issue(served_ws, "tokyo", "other")
    running.server.tokens.refresh()
    held = [raw(running.url, greedy) for _ in range(running.server.limits.max_connections_per_client)]
    try:
        with pytest.raises(ServeError, match="503.*greedy holds") as e:
            Client(running.url, greedy, EMBODIMENT)
        assert e.value.code == "busy"
        with Client(running.url, other, EMBODIMENT) as c:  # the others are not locked out
            assert c.info()["model"] == MODEL
    finally:
        for h in held:
            h.close()


def test_repeated_bad_tokens_from_one_peer_are_slowed(running: service.Running, token: str) -> None:
    running.server._bad_peers.clear()  # earlier tests' refusals from 127.0.0.1 do not count here
    times = []
    for _ in range(7):
        t0 = time.monotonic()
        with pytest.raises(ServeError, match="401"):
            Client(running.url, "onshore_guess", EMBODIMENT)
        times.append(time.monotonic() - t0)
    assert max(times[:2]) < 0.5  # the first few are answered at once
    assert sum(times[3:]) >= 0.1 + 0.2 + 0.4 + 0.8 - 0.05, times  # then 0.1, 0.2, 0.4, 0.8 s
    t0 = time.monotonic()
    with Client(running.url, token, EMBODIMENT) as c:  # a good token is not slowed
        c.info()
    assert time.monotonic() - t0 < 1.0


def test_refusals_held_back_for_bad_tokens_are_bounded(running: service.Running) -> None:
    """Slowing bad tokens holds their connections open: a spray of them at once must not pile up
    held connections without end (file descriptors); at most ``max_connections`` are held back,
    the rest are answered at once."""
    import asyncio

    from onshore.serve.server import PolicyServer, ServerLimits

    server = PolicyServer(running.served, running.server.tokens,
                          ServerLimits(max_connections=4, bad_tokens_free=0, bad_token_delay_max=3.0))
    loop = asyncio.new_event_loop()
    port = loop.run_until_complete(server.start("127.0.0.1", 0))
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    took: list[float] = []

    def guess() -> None:
        t0 = time.monotonic()
        with pytest.raises(ServeError, match="401"):
            Client(f"ws://127.0.0.1:{port}", "onshore_guess", EMBODIMENT, timeout=10)
        took.append(time.monotonic() - t0)

    try:
        guessers = [threading.Thread(target=guess) for _ in range(16)]
        for g in guessers:
            g.start()
        for g in guessers:
            g.join(30)
        assert len(took) == 16
        assert sum(x < 0.095 for x in took) >= 8, sorted(took)  # at most 4 held back at once (0.1 s and more)
        assert max(took) >= 0.1  # the slowing itself still works
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def test_a_client_script_that_never_closes_exits_at_once(running: service.Running, token: str) -> None:
    script = ("import sys, numpy as np\nfrom onshore.serve import Client\n"
              f"c = Client({running.url!r}, {token!r}, {EMBODIMENT!r})\nc.reset({TASK!r})\n"
              "print(c.act(np.array([600.0, 640.0, 4.0], np.float32)).shape)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "(2,)", out.stderr
    assert time.monotonic() - t0 < 15  # the import of numpy and websockets, not a hang at exit


def test_a_server_that_never_answers_gives_a_clear_error_within_the_timeout() -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts TCP, never answers the WebSocket handshake
    url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        with pytest.raises(ServeError, match="did not answer the opening handshake within 1 s") as e:
            Client(url, "onshore_x", EMBODIMENT, timeout=1.0)
        assert e.value.code == "timeout" and time.monotonic() - t0 < 5
    finally:
        silent.close()

    import asyncio

    from websockets.asyncio.server import serve

    box: dict = {}
    ready = threading.Event()

    async def mute(ws) -> None:  # type: ignore[no-untyped-def]
        async for _ in ws:  # accepts, never replies
            pass

    def run() -> None:
        async def main() -> None:
            async with serve(mute, "127.0.0.1", 0) as srv:
                box["port"] = srv.sockets[0].getsockname()[1]
                box["stop"] = asyncio.get_running_loop().create_future()
                box["loop"] = asyncio.get_running_loop()
                ready.set()
                await box["stop"]
        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(10)
    try:
        c = Client(f"ws://127.0.0.1:{box['port']}", "onshore_x", EMBODIMENT, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(ServeError, match="no reply to info within 1 s") as e:
            c.info()
        assert e.value.code == "timeout" and time.monotonic() - t0 < 5
        c.close()
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set_result, None)
        t.join(10)


@contextlib.contextmanager
def _hostile_server(handler: object) -> Iterator[str]:
    """A WebSocket server on 127.0.0.1 running ``handler`` on its own thread; yields its URL."""
    import asyncio

    from websockets.asyncio.server import serve as ws_serve

    box: dict = {}
    ready = threading.Event()

    async def main() -> None:
        async with ws_serve(handler, "127.0.0.1", 0) as srv:  # type: ignore[arg-type]
            box["port"] = srv.sockets[0].getsockname()[1]
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.get_running_loop().create_future()
            ready.set()
            await box["stop"]

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set_result, None)
        t.join(10)


def test_a_server_that_only_sends_old_replies_times_out_the_request() -> None:
    """A server that answers every request with an endless trickle of replies to earlier requests
    (old ids) is not answering: the request ends with ``timeout`` after ``timeout`` seconds in all,
    not ``timeout`` seconds per stale reply (a hang)."""
    import asyncio

    async def stale(ws) -> None:  # type: ignore[no-untyped-def]
        async for _ in ws:
            for _ in range(200):  # bounded: 20 s at most
                await ws.send(wire.pack({"type": "info", "id": 0}))
                await asyncio.sleep(0.1)

    with _hostile_server(stale) as url:
        c = Client(url, "onshore_x", EMBODIMENT, timeout=1.0)
        out: dict = {}

        def call() -> None:
            t0 = time.monotonic()
            try:
                c.info()
            except ServeError as e:
                out["error"], out["took"] = e, time.monotonic() - t0

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "the client kept waiting on stale replies"
        assert out["error"].code == "timeout" and out["took"] < 3, out
        c.close()


def test_serve_errors_cross_process_boundaries() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(ServeError("refused", "serving refused: dataset/furnace/withdrawn")))
    assert isinstance(e, ServeError) and e.code == "refused" and "withdrawn" in str(e)
    w = pickle.loads(pickle.dumps(wire.WireError("bad_state", "NaN")))
    assert w.code == "bad_state" and str(w) == "NaN"
