"""`onshore serve --protocol openpi` driven by the real openpi-client package (PyPI, installed by
`make test`): tokens as its api_key, the machine's envelope shared with Onshore clients, hostile
observations refused without ending the session, residency refusals reaching the client."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from _serving import EMBODIMENT, MODEL, TASK, furnace_workspace
from onshore.errors import ValidationError
from onshore.serve import Client, service, tokens
from onshore.serve.server import ServerLimits
from onshore.workspace import Workspace

STATE = np.array([600.0, 640.0, 4.0], dtype=np.float32)
FAST = ServerLimits(act_hz=1000.0)  # the furnace's 10 Hz control rate would pace a test at 0.1 s per act


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    w = furnace_workspace(tmp_path_factory.mktemp("openpi"))
    yield w
    w.close()


@pytest.fixture(scope="module")
def running(ws: Workspace) -> Iterator[service.Running]:
    with service.start(ws, MODEL, "tokyo", port=0, limits=FAST, protocol="openpi") as run:
        yield run


def _token(ws: Workspace, running: service.Running, client: str) -> str:
    value = tokens.issue(ws, "tokyo", client)
    running.server.tokens.refresh()
    return value


def _policy(running: service.Running, token: str | None) -> WebsocketClientPolicy:
    return WebsocketClientPolicy(host="ws://127.0.0.1", port=running.port, api_key=token)


def test_openpi_client_gets_metadata_and_the_actions_an_onshore_client_gets(ws: Workspace,
                                                                             running: service.Running) -> None:
    policy = _policy(running, _token(ws, running, "openpi-arm"))
    meta = policy.get_server_metadata()
    assert meta["server"] == "onshore" and meta["model"] == MODEL and meta["embodiment"] == EMBODIMENT
    assert meta["digest"] == running.served.digest and meta["action_horizon"] == 1
    states = [STATE + np.float32(k) for k in range(4)]
    got = [policy.infer({"observation/state": s, "prompt": TASK}) for s in states]
    for g in got:
        assert g["actions"].shape == (1, 2) and g["actions"].dtype == np.float32
        assert np.isfinite(g["actions"]).all() and g["onshore"]["estopped"] is False
    # the same model, states and envelope rules through Onshore's own protocol on another machine
    with service.start(ws, MODEL, "tokyo", port=0, limits=FAST) as plain, \
            Client(plain.url, _token(ws, plain, "onshore-arm"), EMBODIMENT) as c:
        c.reset(TASK)
        want = [c.act(s) for s in states]
    # a fresh machine's first command is the model's, bit for bit; later ones are ramped by the
    # envelope's rate limit, which depends on the time between acts, so only their clamp is compared
    assert np.array_equal(got[0]["actions"][0], want[0])
    assert all("rate" in g["onshore"]["interventions"] for g in got[1:])
    assert all(np.abs(g["actions"][0] - got[0]["actions"][0]).max() < 1.0 for g in got[1:])


def test_an_estop_latched_through_onshores_protocol_holds_for_openpi_clients(ws: Workspace) -> None:
    tok = tokens.issue(ws, "tokyo", "cell-7")

    def openpi_estopped(prompt: str) -> bool:
        with service.start(ws, MODEL, "tokyo", port=0, limits=FAST, protocol="openpi") as op:
            reply = _policy(op, tok).infer({"state": STATE.tolist(), "prompt": prompt})
        assert reply["actions"].shape == (1, 2)
        return bool(reply["onshore"]["estopped"]) and "estop" in reply["onshore"]["interventions"]

    assert not openpi_estopped(TASK)
    # openpi has no e-stop message: the line's bridge (Onshore's protocol) latches it, for the machine
    with service.start(ws, MODEL, "tokyo", port=0, limits=FAST) as plain, Client(plain.url, tok, EMBODIMENT) as c:
        c.reset(TASK)
        c.estop("guard door opened")
    assert openpi_estopped(TASK) and openpi_estopped("another task")  # across restarts, prompts and protocols
    with service.start(ws, MODEL, "tokyo", port=0, limits=FAST) as plain, Client(plain.url, tok, EMBODIMENT) as c:
        c.reset(TASK)
        c.reset_estop(by="shift lead")
    assert not openpi_estopped(TASK)


def test_tokens_are_checked_and_hostile_observations_are_refused(ws: Workspace, running: service.Running) -> None:
    with pytest.raises(InvalidStatus) as no_key:
        _policy(running, None)
    assert no_key.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        _policy(running, "not-a-token")
    policy = _policy(running, _token(ws, running, "hostile-cell"))
    with pytest.raises(RuntimeError, match="no_session.*prompt"):
        policy.infer({"state": STATE})  # no task text to start an episode with
    bad = [
        ({"prompt": TASK}, "bad_message.*state"),
        ({"state": STATE, "observation/state": STATE, "prompt": TASK}, "exactly one"),
        ({"state": np.zeros(5, np.float32), "prompt": TASK}, "bad_state.*5 values"),
        ({"state": np.array([np.nan, 1, 2], np.float32), "prompt": TASK}, "not finite"),
        ({"state": STATE, "prompt": 7}, "must be a string"),
        ({"state": np.array(["a", "b", "c"]), "prompt": TASK}, "dtype"),
    ]
    for obs, needle in bad:
        with pytest.raises(RuntimeError, match=needle):
            policy.infer(obs)
    # hand-made frames openpi's packer would not make: object dtype, a shape the bytes do not fill, junk
    raw = {"state": {b"__ndarray__": True, b"data": b"\x00" * 12, b"dtype": "|O", b"shape": [3]}, "prompt": TASK}
    short = {"state": {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [3]}, "prompt": TASK}
    with connect(f"ws://127.0.0.1:{running.port}",
                 additional_headers={"Authorization": f"Api-Key {_token(ws, running, 'raw-cell')}"}) as conn:
        msgpack_numpy.unpackb(conn.recv())  # metadata first
        for frame, needle in ((msgpack.packb(raw), "dtype"), (msgpack.packb(short), "bytes"),
                              (b"\xc1junk", "bad_frame"), (msgpack.packb([1, 2]), "must be a msgpack map")):
            conn.send(frame)
            reply = conn.recv()
            assert isinstance(reply, str) and needle in reply, (needle, reply)
    # after all that, the session still serves
    assert policy.infer({"state": STATE, "prompt": TASK})["actions"].shape == (1, 2)


def test_a_revoked_token_ends_the_openpi_session_with_a_message(ws: Workspace, running: service.Running) -> None:
    tok = _token(ws, running, "leaving-cell")
    policy = _policy(running, tok)
    assert policy.infer({"state": STATE, "prompt": TASK})["actions"].shape == (1, 2)
    tokens.revoke(ws, "tokyo", "leaving-cell")
    running.server.tokens.refresh()
    with pytest.raises(RuntimeError, match="unauthorized"):
        policy.infer({"state": STATE, "prompt": TASK})


def test_openpi_mode_refuses_an_embodiment_the_model_does_not_act_for(ws: Workspace) -> None:
    with pytest.raises(ValidationError, match="does not act for embodiment 'crane'"):
        service.start(ws, MODEL, "tokyo", port=0, protocol="openpi", embodiment="crane")
    with pytest.raises(ValidationError, match="unknown protocol"):
        service.start(ws, MODEL, "tokyo", port=0, protocol="grpc")
    with pytest.raises(ValidationError, match="--embodiment is for --protocol openpi"):
        service.start(ws, MODEL, "tokyo", port=0, embodiment=EMBODIMENT)
