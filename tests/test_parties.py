"""Many parties (issue 19): real processes on loopback, each party in its own folder, stopped by PID.

One deployment (coordinator + three site nodes, two JP and one US) serves the module; each test
uses its own dataset names. The operator attacks use only what that operator holds: its own kit.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import re
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization

from onshore.errors import IntegrityError, OnshoreError, PolicyDenied, ValidationError
from onshore.keys.keystore import public_key_b64
from onshore.parties import actions
from onshore.parties.audit import load_trust_root, verify_ledger
from onshore.parties.client import CoordinatorClient
from onshore.parties.consortium import parse_consortium
from onshore.parties.kit import Kit, load_kit
from onshore.parties.local import LocalConsortium, consortium_text
from onshore.parties.provision import provision
from onshore.parties.signed import RequestRefused, sign_request
from onshore.parties.site import flight_client, push
from onshore.residency.policy import UsagePolicy

JP_ONLY = ('jurisdictions = ["JP"]\nsites = []\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'
           'derived_models = "keep"\n')
TOKYO_ONLY = JP_ONLY.replace("sites = []", 'sites = ["tokyo"]')
ROBOTICS, CHEMICALS = "member:kansai-robotics", "member:kansai-chemicals"


def frames(n: int, seed: int = 0) -> pa.Table:
    return pa.table({"episode_index": pa.array([seed] * n, pa.int64()),
                     "frame_index": pa.array(range(n), pa.int64()),
                     "observation.state": pa.array([[float(i % 7), float(seed)] for i in range(n)],
                                                   pa.list_(pa.float32()))})


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalConsortium]:
    c = LocalConsortium.provision(tmp_path_factory.mktemp("parties") / "dep")
    c.start_all()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tel")
    pq.write_table(frames(20000), d / "a.parquet")
    (d / "jp.toml").write_text(JP_ONLY)
    (d / "tokyo.toml").write_text(TOKYO_ONLY)
    return {"a": d / "a.parquet", "jp": d / "jp.toml", "tokyo": d / "tokyo.toml", "dir": d}


def held(dep: LocalConsortium, site: str) -> list[str]:
    kit = dep.kit(f"site:{site}")
    res = list(flight_client(kit, kit.sites[site].flight).do_action(fl.Action("health", b"")))
    return json.loads(res[0].body.to_pybytes())["datasets"]


def flight_refusal(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(fl.FlightError) as e:
        fn()
    return str(e.value)


# ---- provisioning --------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace('jurisdiction = "US"', 'jurisdiction = "us"'), "sites[2].jurisdiction"),
    (lambda t: t.replace('name = "sakai"', 'name = "../sakai"'), "sites[0].name"),
    (lambda t: t + '\n[extra]\nx = 1\n', "<top>.extra"),
    (lambda t: t.replace('name = "tokyo"', 'name = "sakai"'), "name"),
    (lambda t: re.sub(r"roles = \[[^\]]*\]", 'roles = ["cooking"]', t, count=1), "sites[0].roles"),
])
def test_provision_refuses_a_hostile_consortium_file(tmp_path: Path, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    text = edit(consortium_text())
    with pytest.raises(ValidationError) as e:
        provision(parse_consortium(text, "c.toml"), tmp_path / "out")
    assert f"c.toml: field {field!r}" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_provision_never_overwrites_a_kit(tmp_path: Path) -> None:
    c = parse_consortium(consortium_text(), "c.toml")
    provision(c, tmp_path / "out")
    before = (tmp_path / "out" / "coordinator" / "keys" / "identity.pem").read_bytes()
    with pytest.raises(ValidationError, match="not empty"):
        provision(c, tmp_path / "out")
    assert (tmp_path / "out" / "coordinator" / "keys" / "identity.pem").read_bytes() == before


# ---- the story over the network ------------------------------------------------------------------

def test_ingest_copy_read_and_refusals(dep: LocalConsortium, files: dict[str, Path], tmp_path: Path) -> None:
    member = dep.kit(ROBOTICS)
    res = actions.ingest(member, "arms", [files["a"]], "sakai", files["jp"])
    assert res["frames"] == 20000 and "arms" in held(dep, "sakai")
    assert actions.copy(dep.kit("site:tokyo"), "arms", "sakai")["frames"] == 20000
    with pytest.raises(PolicyDenied) as e:
        actions.copy(dep.kit("site:ohio"), "arms", "sakai")
    assert "dataset/arms/jurisdictions" in e.value.rules
    assert "arms" not in held(dep, "ohio")
    assert actions.read(dep.kit("site:tokyo"), "arms", tmp_path / "out.parquet") == 20000
    assert pq.read_table(tmp_path / "out.parquet").equals(pq.read_table(files["a"]))
    # a copy moves the encrypted bytes unchanged (the shard keeps its SHA-256, so the ledger can
    # place it at both sites) and the dataset key, sealed to tokyo's node, into tokyo's own custody
    sak = sorted((dep.kit("site:sakai").folder / "data" / "datasets" / "arms").glob("*.parquet"))
    tok = sorted((dep.kit("site:tokyo").folder / "data" / "datasets" / "arms").glob("*.parquet"))
    assert sak and [p.name for p in sak] == [p.name for p in tok] and sak[0].read_bytes() == tok[0].read_bytes()
    assert dep.kit("site:tokyo").keystore().has_dataset_key("arms")
    assert not dep.kit("site:ohio").keystore().has_dataset_key("arms")
    leaves = [json.loads(x) for x in CoordinatorClient(dep.kit("auditor:auditor")).leaves()]
    copy = next(e["body"] for e in leaves if e["kind"] == "data.copy" and e["body"]["dataset"] == "arms")
    assert (copy["from"], copy["to"], copy["shards"]) == ("sakai", "tokyo", [p.stem for p in sak])
    assert not any(b"PARE" in json.dumps(e).encode() for e in leaves)  # nothing but digests in the ledger


def assert_only_own_keys(kits: dict[str, Kit]) -> None:
    """Every kit folder holds exactly one signing key (besides its TLS key), its own; only sites
    hold data keys or a KEK."""
    registered = {label: public_key_b64(kit.public_key("coordinator" if kit.kind == "coordinator" else label))  # type: ignore[arg-type]
                  for label, kit in kits.items() if kit.kind in ("site", "member", "coordinator")}
    for label, kit in kits.items():
        privates = [serialization.load_pem_private_key(f.read_bytes(), None) for f in kit.folder.rglob("*")
                    if f.is_file() and f.name != "tls.key" and b"PRIVATE KEY" in f.read_bytes()[:100]]
        assert len(privates) == 1, f"{label} holds {len(privates)} signing keys"
        mine = public_key_b64(privates[0].public_key())  # type: ignore[arg-type]
        for other, pub in registered.items():
            assert (pub == mine) == (other == label), f"{label}'s folder holds {other}'s key"
        assert (kit.folder / "keys" / "kek.bin").exists() == (kit.kind == "site")
        if kit.kind != "site":
            assert not list(kit.folder.rglob("datasets")), f"{label} holds data or data keys"


def test_each_party_folder_holds_only_its_own_keys(dep: LocalConsortium, files: dict[str, Path]) -> None:
    actions.ingest(dep.kit(CHEMICALS), "plant", [files["a"]], "tokyo", files["jp"])
    assert_only_own_keys(dep.kits)
    assert not list((dep.kit("site:ohio").folder / "keys").rglob("datasets/*.key"))
    assert [p.parent.name for p in (dep.root / "kits").rglob("ca.key")] == ["ca"]  # the provisioner's, in no kit


def test_the_multi_party_demo_runs_and_leaves_each_party_its_own_keys(tmp_path: Path) -> None:
    from rich.console import Console

    from onshore.demo_parties import run_parties_demo

    out = Console(record=True, width=200)
    assert run_parties_demo(tmp_path / "demo", out) == 0, out.export_text()[-3000:]
    text = out.export_text()
    assert "refused by the coordinator (dataset/arms/jurisdictions)" in text
    assert "checked by the site itself" in text and "(dataset/arms/withdrawn)" in text
    assert "cosigned by witness-kyoto (verified" in text
    kits = {f"{k.kind}:{k.name}": k for k in (load_kit(f) for f in (tmp_path / "demo" / "deployment" / "kits").iterdir()
                                             if (f / "kit.json").exists())}
    assert len(kits) == 8
    assert_only_own_keys(kits)
    assert not any((tmp_path / "demo" / "deployment" / "kits" / "site-ohio").rglob("datasets/*"))


# ---- what one operator can still not do ------------------------------------------------------------

def _decision_as_coordinator(dep: LocalConsortium, request: dict, allow_body: dict) -> dict:  # type: ignore[type-arg]
    """A decision signed with the coordinator's log key: a compromised coordinator (the sites must
    still refuse what their own rules forbid)."""
    key = dep.kit("coordinator:coordinator").keystore().identity()
    return sign_request("coordinator", "decision", allow_body, key)


def test_us_operator_cannot_get_jp_data(dep: LocalConsortium, files: dict[str, Path]) -> None:
    member, ohio = dep.kit(ROBOTICS), dep.kit("site:ohio")
    actions.ingest(member, "welds", [files["a"]], "sakai", files["jp"])
    co = CoordinatorClient(ohio)
    # a decision for itself to read or copy: denied by the coordinator
    with pytest.raises(PolicyDenied):
        co.decide("copy", "welds", "ohio")
    with pytest.raises(PolicyDenied, match="site-acts-for-itself"):
        co.decide("read", "welds", "sakai")
    # at sakai's node with its own request and no valid decision: refused
    req = sign_request("site:ohio", "decide", {"action": "read", "dataset": "welds", "site": "sakai",
                                               "purpose": None}, ohio.keystore().identity())
    sakai = flight_client(ohio, ohio.sites["sakai"].flight)
    msg = flight_refusal(lambda: sakai.do_get(fl.Ticket(json.dumps({"request": req, "decision": {}}))).read_all())
    assert "refused" in msg
    # a captured decision (tokyo's own read) replayed, or edited to name ohio: refused
    treq, tdec = CoordinatorClient(dep.kit("site:tokyo")).decide("copy", "welds", "tokyo")
    edited = json.loads(json.dumps(tdec))
    edited["body"]["site"] = "ohio"
    edited["body"]["principal"] = "site:ohio"
    oreq = sign_request("site:ohio", "decide", {"action": "copy", "dataset": "welds", "site": "ohio",
                                                "purpose": None}, ohio.keystore().identity())
    assert "does not verify" in flight_refusal(lambda: list(sakai.do_action(fl.Action(
        "copy", json.dumps({"request": oreq, "decision": edited, "source": "sakai"}).encode()))))
    assert "bound to site 'tokyo'" in flight_refusal(lambda: list(sakai.do_action(fl.Action(
        "copy", json.dumps({"request": oreq, "decision": tdec, "source": "sakai"}).encode()))))
    # even a compromised coordinator's "allow" does not make the US node store JP-only data
    ireq = sign_request(ROBOTICS, "decide", {"action": "ingest", "dataset": "welds", "site": "ohio",
                                             "purpose": None}, member.keystore().identity())
    consent = json.loads(json.dumps(tdec["body"]["consent"]))
    forged = _decision_as_coordinator(dep, ireq, {
        "principal": ROBOTICS, "site": "ohio", "action": "ingest", "dataset": "welds", "purpose": None,
        "request_nonce": ireq["nonce"], "decision": "allow", "rules": [], "policy_hash": "", "consent": consent})
    tab = frames(100)
    with pytest.raises(fl.FlightError, match="checked by the site itself"):
        push(flight_client(member, member.sites["ohio"].flight), {"request": ireq, "decision": forged},
             iter(tab.to_batches()), tab.schema)
    assert "welds" not in held(dep, "ohio")
    assert not list((ohio.folder / "data").rglob("*.parquet"))


def test_sakai_operator_cannot_read_a_tokyo_only_dataset(dep: LocalConsortium, files: dict[str, Path]) -> None:
    actions.ingest(dep.kit(CHEMICALS), "secret", [files["a"]], "tokyo", files["tokyo"])
    with pytest.raises(PolicyDenied, match="dataset/secret/sites"):
        actions.copy(dep.kit("site:sakai"), "secret", "tokyo")
    sakai = dep.kit("site:sakai")
    with pytest.raises(PolicyDenied):
        CoordinatorClient(sakai).decide("read", "secret", "tokyo")
    req = sign_request("site:sakai", "decide", {"action": "read", "dataset": "secret", "site": "tokyo",
                                                "purpose": None}, sakai.keystore().identity())
    tokyo = flight_client(sakai, sakai.sites["tokyo"].flight)
    assert "refused" in flight_refusal(
        lambda: tokyo.do_get(fl.Ticket(json.dumps({"request": req, "decision": {}}))).read_all())


def test_a_member_cannot_act_as_another(dep: LocalConsortium, files: dict[str, Path]) -> None:
    actions.ingest(dep.kit(ROBOTICS), "owned", [files["a"]], "sakai", files["jp"])
    chem = dep.kit(CHEMICALS)
    # signing as robotics with chemicals' key
    forged = sign_request(ROBOTICS, "decide", {"action": "withdraw", "dataset": "owned", "site": "sakai"},
                          chem.keystore().identity())
    with pytest.raises(RequestRefused, match="does not verify"):
        CoordinatorClient(chem)._call("POST", "/v1/decide", forged)
    with pytest.raises(PolicyDenied):
        CoordinatorClient(chem).decide("withdraw", "owned", "sakai")
    with pytest.raises(PolicyDenied):  # its withdraw decision is a deny
        CoordinatorClient(chem).withdraw("owned")
    with pytest.raises(RequestRefused, match="only its owner"):  # and the coordinator refuses it anyway
        CoordinatorClient(chem)._with_entry("/v1/withdraw", "consent.withdraw", {"dataset": "owned"},
                                            "consent.withdraw", {"dataset": "owned", "decision_index": 0})
    # the owner's own withdrawal must cite an allowing withdraw decision of its own
    with pytest.raises(RequestRefused, match="not an allowing withdraw decision"):
        CoordinatorClient(dep.kit(ROBOTICS))._with_entry("/v1/withdraw", "consent.withdraw", {"dataset": "owned"},
                                                         "consent.withdraw", {"dataset": "owned", "decision_index": 0})
    assert "owned" in held(dep, "sakai")


def test_without_a_consortium_certificate_the_handshake_fails(dep: LocalConsortium, tmp_path: Path) -> None:
    kit = dep.kit(ROBOTICS)
    host, port = dep.endpoint("coordinator:coordinator")
    ctx = ssl.create_default_context(cafile=str(kit.ca))  # trusts the CA, presents no certificate
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
    # a certificate from another CA (another consortium) is refused too
    other = LocalConsortium.provision(tmp_path / "other").kit(ROBOTICS)
    ctx2 = ssl.create_default_context(cafile=str(kit.ca))
    ctx2.load_cert_chain(str(other.cert), str(other.key))
    conn = http.client.HTTPSConnection(host, port, context=ctx2, timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
    site = fl.FlightClient(kit.sites["sakai"].flight, tls_root_certs=kit.ca.read_bytes())
    with pytest.raises(fl.FlightError):
        list(site.do_action(fl.Action("health", b""), fl.FlightCallOptions(timeout=5)))


def test_a_replayed_signed_request_is_refused(dep: LocalConsortium) -> None:
    member = dep.kit(ROBOTICS)
    co = CoordinatorClient(member)
    co.consent("once", UsagePolicy.from_json({"jurisdictions": ["JP"], "sites": [], "purposes": ["fine-tuning"],
                        "expires": "2031-03-31", "derived_models": "keep", "redistribution": False}))
    req = sign_request(ROBOTICS, "decide", {"action": "ingest", "dataset": "once", "site": "sakai",
                                            "purpose": None}, member.keystore().identity())
    co._call("POST", "/v1/decide", req)
    with pytest.raises(RequestRefused, match="replayed"):
        co._call("POST", "/v1/decide", req)
    # at a site: an upload's request + decision work once
    request, decision = co.decide("ingest", "once", "sakai")
    tab = frames(50)
    site = flight_client(member, member.sites["sakai"].flight)
    push(site, {"request": request, "decision": decision}, iter(tab.to_batches()), tab.schema)
    with pytest.raises(fl.FlightError, match="replayed"):
        push(site, {"request": request, "decision": decision}, iter(tab.to_batches()), tab.schema)


def test_a_tampered_stream_is_refused_and_leaves_nothing(dep: LocalConsortium) -> None:
    member = dep.kit(ROBOTICS)
    co = CoordinatorClient(member)
    co.consent("tampered", UsagePolicy.from_json({"jurisdictions": ["JP"], "sites": [], "purposes": ["fine-tuning"],
                            "expires": "2031-03-31", "derived_models": "keep", "redistribution": False}))
    request, decision = co.decide("ingest", "tampered", "sakai")
    honest, evil = frames(1000), frames(1000, seed=9)

    def edited() -> Iterator[pa.RecordBatch]:  # the digest is computed over honest, evil is sent
        yield from evil.to_batches()
    import hashlib

    h = hashlib.sha256()
    for b in honest.to_batches():
        h.update(b.serialize())
    writer, reader = flight_client(member, member.sites["sakai"].flight).do_put(
        fl.FlightDescriptor.for_command(json.dumps({"request": request, "decision": decision})), evil.schema)
    for b in edited():
        writer.write_batch(b)
    writer.write_metadata(pa.py_buffer(json.dumps({"sha256": h.hexdigest(), "frames": 1000}).encode()))
    writer.done_writing()
    with pytest.raises(fl.FlightError, match="does not match its digest"):
        reader.read()
        writer.close()
    assert "tampered" not in held(dep, "sakai")
    sakai = dep.kit("site:sakai").folder
    assert not (sakai / "data" / "datasets" / "tampered").exists()
    assert not (sakai / "keys" / "datasets" / "tampered.key").exists()


def test_kill_9_of_a_site_mid_upload_leaves_nothing_and_a_retry_succeeds(dep: LocalConsortium) -> None:
    member = dep.kit(ROBOTICS)
    co = CoordinatorClient(member)
    co.consent("crashy", UsagePolicy.from_json({"jurisdictions": ["JP"], "sites": [], "purposes": ["fine-tuning"],
                          "expires": "2031-03-31", "derived_models": "keep", "redistribution": False}))
    request, decision = co.decide("ingest", "crashy", "sakai")
    tab = frames(5000)
    started = threading.Event()
    errors: list[BaseException] = []

    def slow() -> Iterator[pa.RecordBatch]:
        for i in range(400):
            if i == 5:
                started.set()
            yield tab.to_batches()[0]
            time.sleep(0.02)

    def upload() -> None:
        try:
            push(flight_client(member, member.sites["sakai"].flight), {"request": request, "decision": decision},
                 slow(), tab.schema)
        except BaseException as e:  # noqa: BLE001 - the failure is what is checked
            errors.append(e)

    t = threading.Thread(target=upload)
    t.start()
    assert started.wait(30)
    time.sleep(0.3)
    dep.kill("site:sakai", signal.SIGKILL)
    t.join(60)
    assert errors, "the upload should fail when its site dies"
    staging = dep.kit("site:sakai").folder / "data" / ".staging"
    assert staging.exists() and any(staging.rglob("*"))  # what the crash left, before restart
    dep.start("site:sakai")
    assert not any(staging.rglob("*.parquet")) and not any(staging.rglob("*.tmp"))
    assert "crashy" not in held(dep, "sakai")
    request, decision = co.decide("ingest", "crashy", "sakai")
    res = push(flight_client(member, member.sites["sakai"].flight), {"request": request, "decision": decision},
               iter([tab.to_batches()[0]] * 3), tab.schema)
    assert res["frames"] == 15000 and "crashy" in held(dep, "sakai")


def test_the_ledger_verifies_offline_from_the_trust_root(dep: LocalConsortium, files: dict[str, Path]) -> None:
    actions.ingest(dep.kit(ROBOTICS), "audited", [files["a"]], "sakai", files["jp"])
    co = CoordinatorClient(dep.kit("auditor:auditor"))
    note, leaves = co.checkpoint(), [x.encode() for x in co.leaves()]
    trust = load_trust_root(dep.root / "kits" / "trust-root.json")
    audit = verify_ledger(note, leaves, trust)
    assert audit.witnesses == ()  # nobody asked the witness yet
    assert CoordinatorClient(dep.kit(ROBOTICS)).cosign()["cosigned_by"] == ["witness-kyoto"]
    note, leaves = co.checkpoint(), [x.encode() for x in co.leaves()]
    audit = verify_ledger(note, leaves, trust)
    assert audit.witnesses == ("witness-kyoto",)
    assert audit.kinds["consent.grant"] >= 1 and audit.kinds["data.ingest"] >= 1 and audit.kinds["decision"] >= 1
    assert audit.actors["site:sakai"] >= 1
    # an edited entry, or a checkpoint signed by another key, does not verify
    first = json.loads(leaves[0])["body"]["dataset"].encode()
    edited = [leaves[0].replace(b'"' + first + b'"', b'"other"'), *leaves[1:]]
    assert edited[0] != leaves[0]
    with pytest.raises(IntegrityError, match="root"):
        verify_ledger(note, edited, trust)
    other = load_trust_root(LocalConsortium.provision(dep.root.parent / "other").root / "kits" / "trust-root.json")
    with pytest.raises(IntegrityError, match="log key"):
        verify_ledger(note, leaves, dataclasses.replace(trust, log_vkey=other.log_vkey,
                                                        log_public_key=other.log_public_key))


def test_coordinator_on_postgresql(tmp_path: Path, fresh_postgres_db: str, files: dict[str, Path]) -> None:
    c = LocalConsortium.provision(tmp_path / "pg")
    try:
        c.start("coordinator:coordinator", fresh_postgres_db)
        c.start("site:sakai")
        res = actions.ingest(c.kit(ROBOTICS), "arms", [files["a"]], "sakai", files["jp"])
        assert res["frames"] == 20000
        import psycopg

        with psycopg.connect(fresh_postgres_db) as conn:
            kinds = [r[0] for r in conn.execute("SELECT kind FROM ledger_entries ORDER BY idx")]
        assert kinds[:1] == ["consent.grant"] and "data.ingest" in kinds
        assert not (c.kit("coordinator:coordinator").folder / "state" / "coordinator.db").exists()
    finally:
        c.stop()


def test_dataset_ingest_with_a_member_profile(dep: LocalConsortium, files: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.cli.app import main

    monkeypatch.setenv("ONSHORE_PROFILES", str(tmp_path / "profiles.json"))
    kit = str(dep.kit(ROBOTICS).folder)
    assert main(["profile", "add", "robotics", "--kit", kit]) == 0
    capsys.readouterr()
    assert main(["profile", "add", "robotics", "--kit", kit]) == 1  # a name is used once
    assert main(["profile", "add", "site", "--kit", str(dep.kit("site:sakai").folder)]) == 1  # not a member's kit
    code = main(["dataset", "ingest", "profiled", str(files["a"]), "--site", "sakai", "--policy", str(files["jp"]),
                 "--profile", "robotics", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out)["frames"] == 20000 and "profiled" in held(dep, "sakai")
    assert "PRIVATE" not in (tmp_path / "profiles.json").read_text()
    # the US site: refused by the coordinator, exit 3, nothing stored
    code = main(["dataset", "ingest", "profiled2", str(files["a"]), "--site", "ohio", "--policy", str(files["jp"]),
                 "--profile", "robotics"])
    assert code == 3 and "profiled2" not in held(dep, "ohio")
    # without --profile the embedded command still needs --member and --embodiment (exit 2)
    assert main(["dataset", "ingest", "x", str(files["a"]), "--site", "sakai", "--policy", str(files["jp"])]) == 2


def test_a_site_that_cannot_be_reached_and_a_coordinator_restart(dep: LocalConsortium, files: dict[str, Path]) -> None:
    member = dep.kit(ROBOTICS)
    dep.kill("site:ohio")
    CoordinatorClient(member).consent("waiting", UsagePolicy.from_json({
        "jurisdictions": ["US"], "sites": [], "purposes": ["fine-tuning"], "expires": "2031-03-31",
        "derived_models": "keep", "redistribution": False}))
    with pytest.raises(OnshoreError, match="site ohio could not be reached"):
        actions.ingest(member, "waiting", [files["a"]], "ohio")
    dep.start("site:ohio")
    # the coordinator restarts: its ledger and registry are kept; a client waits for it
    size = CoordinatorClient(member).health()["ledger_size"]
    dep.kill("coordinator:coordinator")
    restart = threading.Timer(1.0, lambda: dep.start("coordinator:coordinator"))
    restart.start()
    res = actions.ingest(member, "waiting", [files["a"]], "ohio")  # waits for the coordinator, then succeeds
    restart.join()
    assert res["frames"] == 20000 and CoordinatorClient(member).health()["ledger_size"] > size
    dep.kill("coordinator:coordinator")
    with pytest.raises(OnshoreError, match="did not answer"):
        CoordinatorClient(member, wait_s=1.0, quiet=True).health()
    dep.start("coordinator:coordinator")


def test_doctor_kit_checks_every_node_it_can_reach(dep: LocalConsortium, capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.cli.app import main

    kit = str(dep.kit(ROBOTICS).folder)
    assert main(["doctor", "--kit", kit, "--json"]) == 0
    checks = {c["node"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(checks) == {"coordinator", "site:sakai", "site:tokyo", "site:ohio"}
    assert all(c["ok"] for c in checks.values())
    assert "verifies with the kit's log key" in checks["coordinator"]["detail"]
    dep.kill("site:tokyo")
    try:
        assert main(["doctor", "--kit", kit, "--json"]) == 1
        checks = {c["node"]: c for c in json.loads(capsys.readouterr().out)}
        assert not checks["site:tokyo"]["ok"] and "onshore site serve" in checks["site:tokyo"]["detail"]
        assert checks["site:sakai"]["ok"]
    finally:
        dep.start("site:tokyo")


def test_a_dataset_outlives_the_expiry_of_its_consent_request(dep: LocalConsortium, files: dict[str, Path]) -> None:
    """The owner's consent request expires (as every request) but the consent it recorded does not:
    sites keep acting on decisions that carry it."""
    member = dep.kit(ROBOTICS)
    co = CoordinatorClient(member)
    policy = {"jurisdictions": ["JP"], "sites": [], "purposes": ["fine-tuning"], "expires": "2031-03-31",
              "derived_models": "keep", "redistribution": False}
    from onshore.ledger.entries import sign_entry
    from onshore.parties.signed import consent_body

    entry = sign_entry("consent.grant", ROBOTICS,
                       consent_body("lasting", "kansai-robotics", UsagePolicy.from_json(policy)),
                       member.keystore().identity(), links={"dataset:lasting": None})
    co._call("POST", "/v1/consent", sign_request(ROBOTICS, "consent.grant", {
        "dataset": "lasting", "policy": policy, "entry": entry.to_json()}, member.keystore().identity(), ttl_s=3.0))
    time.sleep(3.2)  # the consent request (expires within 3 s: whole seconds) has expired by now
    assert actions.ingest(member, "lasting", [files["a"]], "sakai")["frames"] == 20000
    assert actions.copy(dep.kit("site:tokyo"), "lasting", "sakai")["frames"] == 20000


@pytest.mark.parametrize("name", ["../escape", 'x"); permit (principal, action, resource', "A", ""])
def test_a_hostile_dataset_name_is_refused_and_registers_nothing(dep: LocalConsortium, name: str) -> None:
    co = CoordinatorClient(dep.kit(ROBOTICS))
    policy = UsagePolicy.from_json({"jurisdictions": ["JP"], "sites": [], "purposes": ["fine-tuning"],
                                    "expires": "2031-03-31", "derived_models": "keep", "redistribution": False})
    size = co.health()["ledger_size"]
    with pytest.raises(RequestRefused, match="invalid dataset name"):
        co.consent(name, policy)
    assert co.health()["ledger_size"] == size


def test_kill_9_of_the_destination_mid_copy_leaves_nothing_and_a_retry_succeeds(
        dep: LocalConsortium, tmp_path: Path) -> None:
    import numpy as np

    n = 1_500_000  # about 50 MB of encrypted shards: the copy outlasts the kill's polling
    state = np.random.default_rng(1).uniform(0, 1, size=(n, 8)).astype(np.float32)
    big = pa.table({"episode_index": np.arange(n, dtype=np.int64) // 1000,
                    "frame_index": np.arange(n, dtype=np.int64) % 1000,
                    "observation.state": pa.FixedSizeListArray.from_arrays(state.ravel(), 8)})
    pq.write_table(big, tmp_path / "big.parquet")
    (tmp_path / "jp.toml").write_text(JP_ONLY)
    actions.ingest(dep.kit(ROBOTICS), "bigcopy", [tmp_path / "big.parquet"], "sakai", tmp_path / "jp.toml")
    tokyo = dep.kit("site:tokyo")
    staging = tokyo.folder / "data" / ".staging"
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            actions.copy(tokyo, "bigcopy", "sakai")
        except BaseException as e:  # noqa: BLE001 - the failure is what is checked
            errors.append(e)

    t = threading.Thread(target=copy)
    t.start()
    deadline = time.monotonic() + 30
    while not (staging.exists() and any(staging.rglob("*.part"))) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert t.is_alive(), "the copy finished before the kill: nothing was tested"
    dep.kill("site:tokyo", signal.SIGKILL)
    t.join(60)
    assert errors, "the copy should fail when its destination dies"
    dep.start("site:tokyo")
    assert not any(staging.rglob("*")) and "bigcopy" not in held(dep, "tokyo")
    assert not (tokyo.folder / "data" / "datasets" / "bigcopy").exists()
    assert actions.copy(tokyo, "bigcopy", "sakai")["frames"] == n
    assert "bigcopy" in held(dep, "tokyo")


def test_bundles_from_the_deployment_verify_offline_as_the_embedded_defaults_do(
        dep: LocalConsortium, files: dict[str, Path], tmp_path: Path) -> None:
    """A site attests from the coordinator's evidence; the auditor fetches the bundle from the
    coordinator and runs the unchanged 'onshore verify' on it with the provisioned trust root, before
    and after the owner's withdrawal."""
    import subprocess
    import sys

    trust = dep.root / "kits" / "trust-root.json"
    sakai, tokyo = dep.kit("site:sakai"), dep.kit("site:tokyo")
    from conftest import EMBODIMENT_TOML, make_frames
    from onshore.telemetry.embodiment import Embodiment

    (tmp_path / "furnace.toml").write_text(EMBODIMENT_TOML)
    CoordinatorClient(dep.kit(ROBOTICS)).add_embodiment(Embodiment.from_toml(tmp_path / "furnace.toml"))
    pq.write_table(make_frames(episodes=8, frames=250), tmp_path / "furnace.parquet")
    actions.ingest(dep.kit(ROBOTICS), "bundled", [tmp_path / "furnace.parquet"], "sakai", files["jp"],
                   embodiment="furnace-line-3")
    actions.copy(tokyo, "bundled", "sakai")
    actions.read(tokyo, "bundled", tmp_path / "r.parquet")
    with pytest.raises(PolicyDenied):
        actions.copy(dep.kit("site:ohio"), "bundled", "sakai")  # a refusal: it must be in the claim too
    CoordinatorClient(dep.kit(ROBOTICS)).cosign()

    def verify(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "onshore", "verify", str(path), "--trust-root", str(trust),
                               "--json", *extra], capture_output=True, text=True, timeout=120)

    bundle = actions.attest(sakai, "bundled")
    claim = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))["predicate"]
    assert (claim["embodiment"], claim["ingest"]["site"], [c["to"] for c in claim["copies"]]) == \
        ("furnace-line-3", "sakai", ["tokyo"])
    assert {(r["site"], r["action"]) for r in claim["keyReleases"]} == {("tokyo", "read"), ("sakai", "copy")}
    assert any(d["principal"] == "site:ohio" and d["decision"] == "deny" for d in claim["decisions"])
    out = tmp_path / "fetched.json"
    cli = subprocess.run([sys.executable, "-m", "onshore", "party", "bundle", "bundled", "--out", str(out),
                          "--kit", str(dep.kit("auditor:auditor").folder)], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(out.read_text()) == bundle
    r = verify(out, "--min-witnesses", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(c["status"] == "pass" for c in json.loads(r.stdout)["checks"])

    # an edited claim, or another consortium's trust root, does not verify
    forged = json.loads(out.read_text())
    statement = json.loads(base64.b64decode(forged["dsseEnvelope"]["payload"]))
    statement["predicate"]["copies"][0]["jurisdiction"] = "US"
    forged["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    assert verify(tmp_path / "forged.json").returncode != 0
    other = LocalConsortium.provision(tmp_path / "other").root / "kits" / "trust-root.json"
    r = subprocess.run([sys.executable, "-m", "onshore", "verify", str(out), "--trust-root", str(other)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0

    # after the withdrawal, tokyo (which held and shredded it) attests the withdrawal
    actions.withdraw(dep.kit(ROBOTICS), "bundled", ["sakai", "tokyo"])
    after = actions.attest(tokyo, "bundled")
    wd = json.loads(base64.b64decode(after["dsseEnvelope"]["payload"]))["predicate"]["withdrawal"]
    assert sorted(s["site"] for s in wd["shredded"]) == ["sakai", "tokyo"]
    (tmp_path / "after.json").write_text(json.dumps(after))
    r = verify(tmp_path / "after.json")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("point", ["site.ingest.ledgered", "site.copy.ledgered"])
def test_a_site_killed_between_its_entry_and_publishing_closes_the_entry_on_restart(
        dep: LocalConsortium, files: dict[str, Path], point: str) -> None:
    """The crash window of a site node: its data.ingest (or data.copy) is in the ledger, the shards
    are not published. On restart the node closes the entry with a signed data.abandoned, a retry
    succeeds, and the dataset's bundle verifies with the abandoned attempt left out."""
    name = "crashed-" + point.split(".")[1]
    site = "sakai" if point == "site.ingest.ledgered" else "tokyo"
    member = dep.kit(ROBOTICS)
    if site == "tokyo":
        actions.ingest(member, name, [files["a"]], "sakai", files["jp"])
    dep.kill(f"site:{site}")
    dep.start(f"site:{site}", env={"ONSHORE_FAULT": point})
    with pytest.raises(OnshoreError):
        if site == "sakai":
            actions.ingest(member, name, [files["a"]], "sakai", files["jp"])
        else:
            actions.copy(dep.kit("site:tokyo"), name, "sakai")
    dep.procs[f"site:{site}"].wait(30)  # it killed itself at the crash point
    dep.kill(f"site:{site}")
    co = CoordinatorClient(dep.kit("auditor:auditor"))
    kind = "data.ingest" if site == "sakai" else "data.copy"
    orphan = [i for i, x in enumerate(co.leaves()) if json.loads(x)["kind"] == kind
              and json.loads(x)["body"]["dataset"] == name]
    assert len(orphan) == 1 and name not in held_after_restart(dep, site)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the node reconciles in the background after start-up
        closes = [json.loads(x)["body"]["closes"] for x in co.leaves() if json.loads(x)["kind"] == "data.abandoned"
                  and json.loads(x)["body"]["dataset"] == name]
        if closes:
            break
        time.sleep(0.2)
    assert closes == [orphan]
    if site == "sakai":
        assert actions.ingest(member, name, [files["a"]], "sakai")["frames"] == 20000
    else:
        assert actions.copy(dep.kit("site:tokyo"), name, "sakai")["frames"] == 20000
    bundle = actions.attest(dep.kit(f"site:{site}"), name)  # attest() verifies the bundle itself
    claim = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))["predicate"]
    assert orphan[0] not in [claim["ingest"]["index"], *(c["index"] for c in claim["copies"])]


def held_after_restart(dep: LocalConsortium, site: str) -> list[str]:
    dep.start(f"site:{site}")
    return held(dep, site)


def test_a_site_cannot_abandon_another_sites_entry(dep: LocalConsortium, files: dict[str, Path]) -> None:
    actions.ingest(dep.kit(ROBOTICS), "kept", [files["a"]], "sakai", files["jp"])
    co = CoordinatorClient(dep.kit("auditor:auditor"))
    ingest = next(i for i, x in enumerate(co.leaves()) if json.loads(x)["kind"] == "data.ingest"
                  and json.loads(x)["body"]["dataset"] == "kept")
    for body in ({"dataset": "kept", "closes": [ingest]}, {"dataset": "kept", "closes": []},
                 {"dataset": "kept", "closes": [10 ** 9]}):
        with pytest.raises(RequestRefused, match="close"):
            CoordinatorClient(dep.kit("site:tokyo")).append("data.abandoned", body)
    bundle = actions.attest(dep.kit("site:sakai"), "kept")
    assert json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))["predicate"]["ingest"]["index"] == ingest


def test_a_log_signed_decision_stands_only_with_the_principals_own_request() -> None:
    """The verifier's rule for a deployment's decisions (attest/verify.py), entry by entry."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from onshore.attest.trust import TrustedMember, TrustRoot
    from onshore.attest.verify import decision_signer_problem
    from onshore.ledger.entries import sign_entry

    log, member, other = (Ed25519PrivateKey.generate() for _ in range(3))
    trust = TrustRoot("c", "onshore/c", "vkey", public_key_b64(log.public_key()), [],
                      [TrustedMember("m", public_key_b64(member.public_key())),
                       TrustedMember("o", public_key_b64(other.public_key()))], [])
    ask = {"action": "read", "dataset": "d", "site": "sakai", "purpose": None}

    def decision(req: object, **over: object) -> object:
        body = {"request": {"principal": "member:m", **ask, **over}, "decision": "allow", "signed_request": req}
        return sign_entry("decision", "log", body, log)

    good = sign_request("member:m", "decide", ask, member)
    assert decision_signer_problem(decision(good), "member:m", trust) is None
    assert "carries no request" in str(decision_signer_problem(decision(None), "member:m", trust))
    forged = sign_request("member:m", "decide", ask, other)  # signed with another member's key
    assert "not member:m's signed decide request" in str(decision_signer_problem(decision(forged), "member:m", trust))
    edited = {**good, "body": {**ask, "site": "ohio"}}  # the request edited after signing
    assert "not member:m's" in str(decision_signer_problem(decision(edited), "member:m", trust))
    assert "asked for 'sakai'" in str(decision_signer_problem(decision(good, site="ohio"), "member:m", trust))
    own = sign_entry("decision", "member:m", {"request": {"principal": "member:m", **ask}}, member)
    assert decision_signer_problem(own, "member:m", trust) is None  # the embedded default's form
    assert "signed by member:o" in str(decision_signer_problem(
        sign_entry("decision", "member:o", {"request": {}}, other), "member:m", trust))


def test_the_coordinator_refuses_an_oversized_or_malformed_body(dep: LocalConsortium) -> None:
    from onshore.parties.coordinator import MAX_BODY_BYTES

    co = CoordinatorClient(dep.kit(ROBOTICS))
    size = co.health()["ledger_size"]
    with pytest.raises(RequestRefused, match="at most"):
        co._call("POST", "/v1/decide", "x" * (MAX_BODY_BYTES + 10))
    with pytest.raises(RequestRefused, match="not JSON|not a signed request"):
        co._call("POST", "/v1/decide", "[" * 100_000)
    with pytest.raises(RequestRefused, match="nothing about dataset"):
        co.evidence("never-ingested")
    with pytest.raises(RequestRefused, match="invalid dataset name"):
        co.evidence("../etc")
    assert co.health()["ledger_size"] == size


def test_sites_validate_every_frame_against_the_registered_embodiment(
        dep: LocalConsortium, files: dict[str, Path], tmp_path: Path) -> None:
    from conftest import EMBODIMENT_TOML, make_frames
    from onshore.telemetry.embodiment import Embodiment

    (tmp_path / "furnace.toml").write_text(EMBODIMENT_TOML)
    emb = Embodiment.from_toml(tmp_path / "furnace.toml")
    member = dep.kit(ROBOTICS)
    co = CoordinatorClient(member)
    first = co.add_embodiment(emb)  # (another test of this module may have registered it already)
    assert first["sha256"] == emb.digest() and co.add_embodiment(emb)["index"] is None  # again: a no-op
    changed = Embodiment.from_dict({**emb.to_dict(), "control_hz": 20.0})
    with pytest.raises(RequestRefused, match="immutable"):
        co.add_embodiment(changed)
    with pytest.raises(RequestRefused, match="only a member"):
        CoordinatorClient(dep.kit("site:sakai")).signed("/v1/embodiments", "embodiment.add",
                                                        {"embodiment": emb.to_dict()})
    # frames inside the limits: stored, the embodiment recorded
    good = make_frames(episodes=40, frames=500)
    pq.write_table(good, tmp_path / "good.parquet", row_group_size=4096)
    assert actions.ingest(member, "furnace-ok", [tmp_path / "good.parquet"], "sakai", files["jp"],
                          embodiment="furnace-line-3")["frames"] == 20000
    leaves = [json.loads(x) for x in CoordinatorClient(dep.kit("auditor:auditor")).leaves()]
    ingest = next(e["body"] for e in leaves if e["kind"] == "data.ingest" and e["body"]["dataset"] == "furnace-ok")
    assert ingest["embodiment"] == "furnace-line-3"
    assert any(e["kind"] == "embodiment.add" and e["body"]["sha256"] == emb.digest() for e in leaves)
    # an action outside its channel's limits, deep in the stream: refused by the site, nothing stored
    bad = good.to_pydict()
    bad["action"][15000] = [100.0, 250.0]
    pq.write_table(pa.table(bad, schema=good.schema), tmp_path / "bad.parquet", row_group_size=4096)
    with pytest.raises(OnshoreError, match="air_damper"):
        actions.ingest(member, "furnace-bad", [tmp_path / "bad.parquet"], "sakai", files["jp"],
                       embodiment="furnace-line-3")
    assert "furnace-bad" not in held(dep, "sakai")
    assert not any((dep.kit("site:sakai").folder / "data" / "datasets").glob("furnace-bad*"))
    # an embodiment nobody registered: refused by the coordinator before any decision is recorded
    size = co.health()["ledger_size"]
    with pytest.raises(RequestRefused, match="not registered"):
        actions.ingest(member, "furnace-bad", [files["a"]], "sakai", embodiment="no-such-machine")
    assert co.health()["ledger_size"] == size
