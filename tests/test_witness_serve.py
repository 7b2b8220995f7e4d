"""`onshore witness serve` (c2sp.org/tlog-witness add-checkpoint) as a real process on loopback,
and `onshore witness submit`, the log operator's side, whose cosignatures bundles carry."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from conftest import EMBODIMENT_TOML, POLICY_JP, run_cli, write_frames
from onshore.ledger import checkpoint as ck
from onshore.ledger.witness import Witness
from onshore.ledger.witness_wire import encode_request
from onshore.workspace import Workspace, registry
from onshore.workspace import datasets as D
from test_witness import Log

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    folder: Path
    port: int
    proc: subprocess.Popen[bytes]
    witness: Witness

    def post(self, body: bytes, headers: dict[str, str] | None = None, path: str = "/add-checkpoint",
             method: str = "POST") -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        finally:
            conn.close()

    def add(self, log: Log, old: int, new: int | None = None, proof: list[bytes] | None = None
            ) -> tuple[int, str, bytes]:
        new = log.store.size if new is None else new
        return self.post(encode_request(old, log.proof(old, new) if proof is None else proof, log.checkpoint(new)))

    def size(self, log: Log) -> int:
        return self.witness.logs()[log.origin].size


def _start(folder: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # its log goes to a file beside the folder: a pipe nobody reads would block a chatty server
    log = folder.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "onshore", "witness", "serve", "--folder", str(folder),
                                 "--port", str(port), *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            assert time.monotonic() < deadline, "witness serve did not start"
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(15)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served") / "w"
    w = Witness.init("witness.example/w1", folder)
    proc, port = _start(folder)
    s = Served(folder, port, proc, w)
    yield s
    _stop(s.proc)


_logs = iter(range(1000))


def new_log(served: Served) -> Log:
    """A fresh log, with its own origin and key, that the running witness follows."""
    n = next(_logs)
    log = Log(origin=f"example.com/log-{n}", key=Ed25519PrivateKey.generate())
    served.witness.trust_log(log.vkey)
    return log


def test_cosigns_consistent_checkpoints(served: Served) -> None:
    log = new_log(served).grow_to(3)
    status, ctype, body = served.add(log, 0)
    assert status == 200 and ctype.startswith("text/plain"), body
    assert body.startswith("\u2014 witness.example/w1 ".encode()) and body.endswith(b"\n") and body.count(b"\n") == 1
    cosigned = log.checkpoint(3) + body.decode()
    assert ck.verify_cosignatures(cosigned, [served.witness.vkey]) == ["witness.example/w1"]
    assert served.size(log) == 3
    log.grow_to(8)
    status, _, body = served.add(log, 3)
    assert status == 200, body
    assert ck.verify_cosignatures(log.checkpoint(8) + body.decode(), [served.witness.vkey])
    assert served.size(log) == 8
    # the same checkpoint again (a client that lost the answer) is cosigned again
    assert served.add(log, 8)[0] == 200 and served.size(log) == 8


def test_refuses_stale_old_size_with_its_size(served: Served) -> None:
    log = new_log(served).grow_to(5)
    assert served.add(log, 0)[0] == 200
    log.grow_to(9)
    status, ctype, body = served.add(log, 2)  # a client that thinks the witness is at 2
    assert (status, ctype, body) == (409, "text/x.tlog.size", b"5\n")
    status, ctype, body = served.add(log, 0)
    assert (status, body) == (409, b"5\n")
    # same size, another root: a fork, refused with 409 but not as a size answer
    fork = Log(origin=log.origin, key=log.key).grow_to(5, fork_after=2)
    status, ctype, body = served.add(fork, 5)
    assert status == 409 and ctype.startswith("text/plain") and b"different root hash" in body
    # an old size above the checkpoint's is malformed
    assert served.post(encode_request(7, [], log.checkpoint(6)))[0] == 400
    assert served.size(log) == 5


def test_refuses_a_bad_consistency_proof(served: Served) -> None:
    log = new_log(served).grow_to(6)
    assert served.add(log, 0)[0] == 200
    log.grow_to(11)
    proof = log.proof(6, 11)
    tampered = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    status, _, body = served.add(log, 6, proof=tampered)
    assert status == 422 and b"not shown consistent" in body
    assert served.add(log, 6, proof=proof[:-1])[0] == 422
    # a fork at a larger size with an honest-looking proof of its own
    fork = Log(origin=log.origin, key=log.key).grow_to(11, fork_after=3)
    assert served.add(fork, 6, proof=fork.proof(6, 11))[0] == 422
    assert served.size(log) == 6
    assert served.add(log, 6)[0] == 200 and served.size(log) == 11


def test_refuses_unknown_log_and_unknown_key(served: Served) -> None:
    log = new_log(served).grow_to(4)
    impostor = Log(origin=log.origin, key=Ed25519PrivateKey.generate()).grow_to(4)
    status, _, body = served.add(impostor, 0)
    assert status == 403 and b"not signed by the log key" in body
    stranger = Log(origin="example.com/never-followed", key=Ed25519PrivateKey.generate()).grow_to(4)
    assert served.add(stranger, 0)[0] == 404
    # the log's signature plus an impostor's line: the trusted signature is what counts
    both = log.checkpoint(4) + impostor.checkpoint(4).rsplit("\n\n", 1)[1]
    assert served.post(encode_request(0, [], both))[0] == 200
    assert "example.com/never-followed" not in served.witness.logs() and served.size(log) == 4


def test_refuses_hostile_bodies_and_stays_up(served: Served) -> None:
    log = new_log(served).grow_to(3)
    state = (served.folder / "state.json").read_bytes()
    cp = log.checkpoint(3)
    for body in [b"", b"old 0\n", b"\xff\xfe", b"old 00\n\n" + cp.encode(), b"old -1\n\n" + cp.encode(),
                 b"old 0\n" + b"A" * 44 + b"\n\n" + cp.encode(),                 # a proof from size 0
                 b"old 1\nnot base64\n\n" + cp.encode(),
                 b"old 1\n" + b"AAAA\n" * 2 + b"\n" + cp.encode(),               # not 32-byte hashes
                 encode_request(1, [bytes(32)] * 64, cp),                        # more than 63 proof lines
                 encode_request(0, [], cp.replace("\n3\n", "\n" + "9" * 5000 + "\n")),
                 encode_request(0, [], cp.replace("\u2014", "-"))]:
        status, _, answer = served.post(body)
        assert status == 400, (body[:60], status, answer)
    # too large: refused by Content-Length before reading, and when streamed without one
    assert served.post(b"x" * (65 * 1024))[0] == 413
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("POST", "/add-checkpoint", body=iter([b"x" * 40000] * 3), encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    assert served.post(b"", method="GET")[0] == 405
    assert served.post(encode_request(0, [], cp), path="/add-checkpoint/../state.json")[0] == 404
    assert (served.folder / "state.json").read_bytes() == state  # nothing refused changed anything
    assert served.add(log, 0)[0] == 200


def test_concurrent_requests_never_both_advance_from_one_size(served: Served) -> None:
    log = new_log(served).grow_to(4)
    assert served.add(log, 0)[0] == 200
    log.grow_to(20)
    results: list[int] = []
    barrier = threading.Barrier(6)

    def submit(size: int) -> None:
        barrier.wait()
        results.append(served.add(log, 4, size)[0])

    threads = [threading.Thread(target=submit, args=(size,)) for size in range(10, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [200] + [409] * 5
    assert 10 <= served.size(log) <= 15


def test_state_survives_kill_9_and_restart(tmp_path: Path) -> None:
    w = Witness.init("witness.example/w2", tmp_path / "w")
    log = Log(origin="example.com/durable", key=Ed25519PrivateKey.generate()).grow_to(7)
    w.trust_log(log.vkey)
    proc, port = _start(tmp_path / "w")
    try:
        first = Served(tmp_path / "w", port, proc, w)
        assert first.add(log, 0)[0] == 200
    finally:
        _stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    proc, port = _start(tmp_path / "w")
    try:
        again = Served(tmp_path / "w", port, proc, w)
        assert again.add(log, 0)[:3:2] == (409, b"7\n")  # it remembers what it cosigned
        log.grow_to(9)
        assert again.add(log, 7)[0] == 200
        assert again.size(log) == 9
    finally:
        _stop(proc)


def test_refuses_non_loopback_without_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Witness.init("witness.example/w3", tmp_path / "w")
    code, _, err = run_cli(capsys, "witness", "serve", "--folder", str(tmp_path / "w"), "--port", "1",
                           "--host", "0.0.0.0")
    assert code == 2 and "not loopback" in err


# -- the log operator's side: a workspace's checkpoint cosigned over HTTP, then a bundle -------------

def test_submit_stores_cosignature_and_bundle_verifies_offline(tmp_path: Path, served: Served,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{served.port}"
    with Workspace.init(tmp_path / "ws", "served-test") as ws:
        registry.add_site(ws, "sakai", "JP", "storage,compute")
        registry.add_member(ws, "steelco")
        (tmp_path / "furnace.toml").write_text(EMBODIMENT_TOML)
        registry.add_embodiment(ws, tmp_path / "furnace.toml")
        (tmp_path / "policy.toml").write_text(POLICY_JP)
        D.ingest(ws, "furnace", "steelco", "sakai", tmp_path / "policy.toml", "furnace-line-3",
                 [write_frames(tmp_path / "f.parquet", episodes=2, frames=20)])
        log_vkey = ws.log_vkey
    w = ["-w", str(tmp_path / "ws")]
    # not registered yet: nothing could check its answer, so nothing is sent
    code, _, err = run_cli(capsys, *w, "witness", "submit", url)
    assert code == 1 and "witness add" in err
    assert run_cli(capsys, *w, "witness", "add", "w1", "--vkey", served.witness.vkey)[0] == 0
    # the witness does not follow this log yet: 404, and a message saying what its operator does
    code, _, err = run_cli(capsys, *w, "witness", "submit", url)
    assert code == 1 and "trust-log" in err
    assert run_cli(capsys, "witness", "trust-log", "--dir", str(served.folder), "--log-key", log_vkey)[0] == 0

    code, out, err = run_cli(capsys, *w, "witness", "submit", url, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["witnesses"] == ["w1"] and first["previous_size"] == 0
    assert run_cli(capsys, *w, "trust", "export", "-o", str(tmp_path / "trust.json"))[0] == 0
    assert run_cli(capsys, *w, "attest", "dataset", "furnace", "-o", str(tmp_path / "b1.json"))[0] == 0
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "b1.json"), "--trust-root", str(tmp_path / "trust.json"),
                             "--min-witnesses", "1")
    assert code == 0, out + err

    # the ledger grows; the witness answers 409 with its size and the client proves consistency from it
    with Workspace.open(tmp_path / "ws") as ws:
        D.read(ws, "furnace", "sakai", "fine-tuning")
    code, out, err = run_cli(capsys, *w, "witness", "submit", url, "--json")
    assert code == 0, err
    second = json.loads(out)
    assert second["previous_size"] == first["size"] < second["size"]
    assert served.witness.logs()[f"onshore/{'served-test'}"].size == second["size"]
    assert run_cli(capsys, *w, "attest", "dataset", "furnace", "-o", str(tmp_path / "b2.json"))[0] == 0
    bundle = json.loads((tmp_path / "b2.json").read_text())
    assert ck.parse(bundle["checkpoint"].split("\n\n")[0] + "\n").size == second["size"]
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "b2.json"), "--trust-root", str(tmp_path / "trust.json"),
                             "--min-witnesses", "1")
    assert code == 0, out + err


def test_submit_waits_then_fails_on_an_unreachable_witness(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    registry.add_witness(ws, "w1", Witness.init("witness.example/w9", ws.root.parent / "w9").vkey)
    start = time.monotonic()
    code, _, err = run_cli(capsys, "-w", str(ws.root), "witness", "submit", f"http://127.0.0.1:{_free_port()}",
                           "--wait", "1")
    assert code == 1 and "waiting for the witness" in err and "did not answer within 1 s" in err
    assert time.monotonic() - start < 10
    # the checkpoint was taken and stored, with the log's signature alone
    assert ws.ledger.checkpoint_note().count("\n\u2014 ") == 1


# -- mutual TLS: the flags a consortium's provisioning will fill with its own certificates ----------

def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pems(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, ca=True)
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, ca, ca_key, ca=False)
        (folder / f"{who}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{who}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        out[who], out[f"{who}_key"] = folder / f"{who}.pem", folder / f"{who}.key"
    return out


def test_mutual_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = _pems(tmp_path / "pki")
    w = Witness.init("witness.example/tls", tmp_path / "w")
    with Workspace.init(tmp_path / "ws", "tls-test") as ws:
        registry.add_witness(ws, "tls", w.vkey)
        w.trust_log(ws.log_vkey)
    proc, port = _start(tmp_path / "w", ("--tls-cert", str(pem["server"]), "--tls-key", str(pem["server_key"]),
                                         "--client-ca", str(pem["ca"])))
    try:
        url = f"https://localhost:{port}"
        ws_opt = ["-w", str(tmp_path / "ws")]
        # no client certificate: refused in the handshake (TLS 1.3 may show it as a closed connection)
        code, _, err = run_cli(capsys, *ws_opt, "witness", "submit", url, "--ca", str(pem["ca"]), "--wait", "1")
        assert code == 1 and ("TLS handshake failed" in err or "accepts this client's certificate" in err), err
        # a server certificate from another CA is not trusted
        other = _pems(tmp_path / "other")
        code, _, err = run_cli(capsys, *ws_opt, "witness", "submit", url, "--ca", str(other["ca"]),
                               "--tls-cert", str(pem["client"]), "--tls-key", str(pem["client_key"]), "--wait", "1")
        assert code == 1 and "TLS handshake failed" in err and "CERTIFICATE_VERIFY_FAILED" in err, err
        assert w.logs()["onshore/tls-test"].size == 0
        code, out, err = run_cli(capsys, *ws_opt, "witness", "submit", url, "--ca", str(pem["ca"]),
                                 "--tls-cert", str(pem["client"]), "--tls-key", str(pem["client_key"]))
        assert code == 0 and "by tls" in out, err
        assert w.logs()["onshore/tls-test"].size > 0
    finally:
        _stop(proc)
