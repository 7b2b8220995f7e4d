"""Residency attestations: attest a dataset, verify the bundle offline, and fail on every tampering."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from conftest import EMBODIMENT_TOML, POLICY_JP, build_consortium, cosign_with_witnesses, write_frames
from onshore.attest.bundle import PREDICATE_TYPE, attest_dataset, write_bundle
from onshore.attest.dsse import sign_envelope
from onshore.attest.model_claim import attest_model
from onshore.attest.statement import PAYLOAD_TYPE
from onshore.attest.trust import TrustRoot, build_trust_root
from onshore.attest.verify import CHECK_NAMES, VerificationReport, verify_bundle
from onshore.cli.app import main
from onshore.errors import OnshoreError, PolicyDenied, ValidationError
from onshore.ledger.entries import parse_leaf
from onshore.ledger.log import ledger_entries
from onshore.workspace import Workspace
from onshore.workspace import datasets as D

ONSHORE = [sys.executable, "-c", "from onshore.cli.app import main; main()"]


@dataclass(frozen=True)
class Attested:
    root: Path          # the workspace folder (do not change it: other tests share it)
    bundle: bytes       # the bundle file as written
    trust: TrustRoot    # with two witnesses, both of which cosigned the checkpoint
    trust_path: Path
    scratch: Path

    def doc(self) -> dict[str, Any]:
        return json.loads(self.bundle)


@pytest.fixture(scope="module")
def attested(tmp_path_factory: pytest.TempPathFactory) -> Attested:
    """sakai ingests (JP), copies to tokyo (JP), ohio's copy is refused, tokyo reads, sakai exports."""
    tmp = tmp_path_factory.mktemp("attest")
    with Workspace.init(tmp / "ws", "attest-test") as ws:
        build_consortium(ws, tmp)
        (tmp / "policy.toml").write_text(POLICY_JP)
        D.ingest(ws, "furnace", "steelco", "sakai", tmp / "policy.toml", "furnace-line-3",
                 [write_frames(tmp / "f.parquet", episodes=4, frames=50)])
        D.copy(ws, "furnace", "tokyo")
        with pytest.raises(PolicyDenied):
            D.copy(ws, "furnace", "ohio")
        D.read(ws, "furnace", "tokyo", "fine-tuning")
        D.export(ws, "furnace", "sakai", tmp / "export")
        cosign_with_witnesses(ws, tmp)
        trust = build_trust_root(ws)
        trust.write(tmp / "trust.json")
        write_bundle(attest_dataset(ws, "furnace"), tmp / "bundle.json")
    return Attested(tmp / "ws", (tmp / "bundle.json").read_bytes(), TrustRoot.load(tmp / "trust.json"),
                    tmp / "trust.json", tmp)


def statement_of(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))


def resign(doc: dict[str, Any], key: Ed25519PrivateKey, keyid: str,
           change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """A copy of the bundle whose statement is changed by ``change`` and signed again by ``key``."""
    doc = copy.deepcopy(doc)
    st_ = statement_of(doc)
    if change:
        change(st_)
    doc["dsseEnvelope"] = sign_envelope(rfc8785.dumps(st_), PAYLOAD_TYPE, key, keyid)
    return doc


def site_key(a: Attested, site: str) -> Ed25519PrivateKey:
    with Workspace.open(a.root) as ws:
        return ws.signer(f"site:{site}")


def failing(report: VerificationReport, name: str, *fragments: str) -> None:
    assert not report.ok
    c = report.check(name)
    assert c.status == "fail", (name, [(x.name, x.status, x.message) for x in report.checks])
    for f in fragments:
        assert f in c.message, (f, c.message)


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# --- the good path ---------------------------------------------------------------------------------


def test_bundle_verifies_and_claims_what_happened(attested: Attested) -> None:
    report = verify_bundle(attested.bundle, attested.trust, min_witnesses=2)
    assert report.ok, [(c.name, c.message) for c in report.checks if not c.passed]
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.dataset == "furnace" and report.attester == "sakai"
    assert sorted(report.witnesses) == ["w1", "w2"]
    doc = attested.doc()
    st_ = statement_of(doc)
    assert st_["predicateType"] == PREDICATE_TYPE
    p = st_["predicate"]
    assert p["owner"] == "steelco" and p["allowedJurisdictions"] == ["JP"]
    assert {pl["site"] for s in p["shards"] for pl in s["placements"]} == {"sakai", "tokyo"}
    assert [s["name"] for s in st_["subject"]] == [f"datasets/furnace/{s['sha256']}.parquet" for s in p["shards"]]
    assert [(c["from"], c["to"]) for c in p["copies"]] == [("sakai", "tokyo")]
    assert {r["action"] for r in p["keyReleases"]} == {"copy", "read", "export"}
    assert len(p["exports"]) == 1 and p["withdrawal"] is None
    refused = [d for d in p["decisions"] if d["decision"] == "deny"]
    assert [(d["site"], d["rules"]) for d in refused] == [("ohio", ["dataset/furnace/jurisdictions"])]
    # the bundle carries exactly the cited entries, ascending, and the attestation is in the ledger
    assert [e["index"] for e in doc["entries"]] == sorted({e["index"] for e in doc["entries"]})
    with Workspace.open(attested.root) as ws:
        last = list(ws.ledger.entries(kinds=["data.attest"]))
    assert len(last) == 1 and last[0].entry.actor == "site:sakai"
    assert last[0].entry.body["statement_sha256"] == hashlib.sha256(base64.b64decode(
        doc["dsseEnvelope"]["payload"])).hexdigest()


def test_cli_flow_then_verify_elsewhere(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    w = str(tmp_path / "ws")
    assert run("init", w, "--name", "cli-attest")[0] == 0
    for args in (["site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage,compute"],
                 ["site", "add", "tokyo", "--jurisdiction", "JP", "--roles", "storage,compute"],
                 ["site", "add", "ohio", "--jurisdiction", "US", "--roles", "storage"],
                 ["member", "add", "steelco"]):
        assert run("-w", w, *args)[0] == 0
    (tmp_path / "emb.toml").write_text(EMBODIMENT_TOML)
    (tmp_path / "policy.toml").write_text(POLICY_JP)
    f = write_frames(tmp_path / "f.parquet")
    assert run("-w", w, "embodiment", "add", str(tmp_path / "emb.toml"))[0] == 0
    assert run("-w", w, "dataset", "ingest", "furnace", str(f), "--member", "steelco", "--site", "sakai",
               "--policy", str(tmp_path / "policy.toml"), "--embodiment", "furnace-line-3")[0] == 0
    assert run("-w", w, "dataset", "copy", "furnace", "--to", "tokyo")[0] == 0
    assert run("-w", w, "ledger", "checkpoint", "-o", str(tmp_path / "cp.txt"))[0] == 0
    assert run("-w", w, "trust", "export", "-o", str(tmp_path / "trust.json"))[0] == 0
    log_key = json.loads((tmp_path / "trust.json").read_text())["log"]["vkey"]
    assert run("witness", "init", "witness.example/w1", "--dir", str(tmp_path / "w1"))[0] == 0
    assert run("-w", w, "witness", "add", "w1", "--dir", str(tmp_path / "w1"))[0] == 0
    assert run("witness", "cosign", str(tmp_path / "cp.txt"), "--dir", str(tmp_path / "w1"), "--log-key", log_key,
               "-o", str(tmp_path / "cosigned.txt"))[0] == 0
    assert run("-w", w, "ledger", "checkpoint", "--add-cosigned", str(tmp_path / "cosigned.txt"))[0] == 0
    assert run("-w", w, "trust", "export", "-o", str(tmp_path / "trust.json"))[0] == 0
    code, _, err = run("-w", w, "attest", "dataset", "furnace", "-o", str(tmp_path / "bundle.json"))
    assert code == 0 and "1 cosignature" in err, err
    assert run("-w", w, "dataset", "copy", "furnace", "--to", "ohio")[0] == 3  # a recorded refusal: the log grew
    code, _, err = run("-w", w, "attest", "dataset", "furnace", "-o", str(tmp_path / "bare.json"))
    assert code == 0 and "0 cosignature" in err, err  # a fresh checkpoint no witness has seen yet
    code, _, err = run("-w", w, "attest", "dataset", "furnace", "-o", str(tmp_path / "x.json"), "--site", "ohio")
    assert code == 1 and "holds no shard" in err

    # An auditor's folder: only the bundle and the trust root, no workspace, in a fresh process.
    audit = tmp_path / "audit"
    audit.mkdir()
    shutil.copy(tmp_path / "bundle.json", audit)
    shutil.copy(tmp_path / "trust.json", audit)
    env = {k: v for k, v in os.environ.items() if k != "ONSHORE_WORKSPACE"}
    proc = subprocess.run([*ONSHORE, "verify", "bundle.json", "--trust-root", "trust.json", "--min-witnesses", "1"],
                          cwd=audit, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout and "claim matches ledger" in proc.stdout
    assert not (audit / "onshore.toml").exists()

    monkeypatch.chdir(audit)
    monkeypatch.delenv("ONSHORE_WORKSPACE", raising=False)
    code, out, err = run("verify", "bundle.json", "--trust-root", "trust.json", "--json")
    assert code == 0 and json.loads(out)["ok"] is True and "warning" not in err
    shutil.copy(tmp_path / "bare.json", audit)
    code, out, err = run("verify", "bare.json", "--trust-root", "trust.json")
    assert code == 0 and "verified" in out  # it passes, as asked (no --min-witnesses) ...
    assert "warning" in err and "no witness cosignature" in err and "--min-witnesses" in err  # ... with a warning
    assert run("verify", "bare.json", "--trust-root", "trust.json", "--min-witnesses", "1")[0] == 1
    code, out, err = run("verify", "bundle.json", "--trust-root", "trust.json", "--min-witnesses", "2", "--json")
    report = json.loads(out)
    assert code == 1 and report["failed"] == ["witness cosignatures"] and "witness cosignatures" in err
    code, out, err = run("verify", "bundle.json", "--trust-root", "trust.json", "--min-witnesses", "2")
    assert code == 1 and "NOT verified" in err and "witness cosignatures" in err and "Traceback" not in err
    assert run("verify", "missing.json", "--trust-root", "trust.json")[0] == 1


# --- tampering -------------------------------------------------------------------------------------


def _canon(text: str | bytes) -> str:
    return json.dumps(json.loads(text), sort_keys=True)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_byte_flips_never_verify(attested: Attested, data: st.DataObject) -> None:
    raw = attested.bundle
    pos = data.draw(st.integers(0, len(raw) - 1), label="position")
    xor = data.draw(st.integers(1, 255), label="xor")
    flipped = bytearray(raw)
    flipped[pos] ^= xor
    report = verify_bundle(bytes(flipped), attested.trust, min_witnesses=2)
    try:
        same = _canon(bytes(flipped).decode("utf-8")) == _canon(raw)
    except ValueError:  # not UTF-8 or not JSON
        failing(report, "bundle format")
        return
    if same:  # e.g. a space turned into a newline: the same bundle
        assert report.ok
        return
    assert not report.ok and report.failed, (pos, xor, [(c.name, c.message) for c in report.checks])


def test_not_json_and_missing_fields_fail_bundle_format(attested: Attested) -> None:
    failing(verify_bundle(b"not json", attested.trust), "bundle format", "not JSON")
    doc = attested.doc()
    del doc["checkpoint"]
    r = verify_bundle(doc, attested.trust)
    failing(r, "bundle format", "missing checkpoint")
    assert {c.status for c in r.checks[1:]} == {"not run"}
    doc = attested.doc()
    del doc["entries"][0]["inclusionProof"]
    failing(verify_bundle(doc, attested.trust), "bundle format", "missing inclusionProof")
    failing(verify_bundle(b'{"mediaType": 1, "mediaType": 2}', attested.trust), "bundle format", "duplicate key")


def test_ledger_row_changed(attested: Attested, tmp_path: Path) -> None:
    """Someone edits the copy entry in ledger.db (tokyo -> ohio's jurisdiction) before attesting."""
    shutil.copytree(attested.root, tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        stored = next(iter(ws.ledger.entries(kinds=["data.copy"])))
        e = parse_leaf(stored.leaf)
        forged = rfc8785.dumps({**e.to_json(), "body": {**e.body, "jurisdiction": "JA"}})
        with ws.ledger.engine.begin() as conn:
            conn.execute(update(ledger_entries).where(ledger_entries.c.idx == stored.index)
                         .values(leaf=forged))
        bundle = attest_dataset(ws, "furnace")
    r = verify_bundle(bundle, attested.trust)
    failing(r, "entry signatures", f"entry {stored.index}", "does not verify")
    failing(r, "inclusion proofs", f"entry {stored.index}")
    failing(r, "jurisdictions", "the claim says JA, the trust root says JP")


def test_leaf_replaced_in_bundle(attested: Attested) -> None:
    doc = attested.doc()
    entry = doc["entries"][1]
    e = parse_leaf(base64.b64decode(entry["leaf"]))
    entry["leaf"] = b64(rfc8785.dumps({**e.to_json(), "time": "2020-01-01T00:00:00.000000Z"}))
    r = verify_bundle(doc, attested.trust)
    failing(r, "entry signatures", f"entry {entry['index']}")
    failing(r, "inclusion proofs", f"entry {entry['index']}", "different root")


def test_checkpoint_byte_flipped(attested: Attested) -> None:
    doc = attested.doc()
    origin, size, root, rest = doc["checkpoint"].split("\n", 3)
    doc["checkpoint"] = "\n".join([origin, str(int(size) + 1), root, rest])
    r = verify_bundle(doc, attested.trust, min_witnesses=2)
    failing(r, "checkpoint signature", "does not verify")
    failing(r, "witness cosignatures")
    failing(r, "inclusion proofs")


def _flip_b64_char(text: str, at: int) -> str:
    # Change one base64 digit in the middle, keeping the text canonical base64.
    c = text[at]
    return text[:at] + ("A" if c != "A" else "B") + text[at + 1:]


def test_cosignature_byte_flipped(attested: Attested) -> None:
    doc = attested.doc()
    lines = doc["checkpoint"].split("\n")
    i = next(i for i, ln in enumerate(lines) if "witness.example/w2" in ln)
    name_end = lines[i].index(" ", 2) + 1
    lines[i] = _flip_b64_char(lines[i], name_end + 20)
    doc["checkpoint"] = "\n".join(lines)
    r = verify_bundle(doc, attested.trust)  # even with K = 0, a failing trusted cosignature fails
    failing(r, "witness cosignatures", "witness.example/w2", "does not verify")
    assert r.check("checkpoint signature").passed


def test_entry_deleted_or_reordered(attested: Attested) -> None:
    doc = attested.doc()
    gone = doc["entries"].pop(3)
    failing(verify_bundle(doc, attested.trust), "claim matches ledger",
            f"ledger entry {gone['index']}, which the bundle does not carry")
    doc = attested.doc()
    doc["entries"][2], doc["entries"][3] = doc["entries"][3], doc["entries"][2]
    failing(verify_bundle(doc, attested.trust), "bundle format", "ascending index order")
    doc = attested.doc()  # leaves swapped, indices kept
    a, b = doc["entries"][2], doc["entries"][3]
    a["leaf"], b["leaf"] = b["leaf"], a["leaf"]
    r = verify_bundle(doc, attested.trust)
    failing(r, "inclusion proofs", f"entry {a['index']}", f"entry {b['index']}")
    failing(r, "claim matches ledger")


def test_shard_digest_swapped_in_subject(attested: Attested) -> None:
    def swap(st_: dict[str, Any]) -> None:
        st_["subject"][0]["digest"]["sha256"] = "ab" * 32

    doc = attested.doc()
    unsigned = copy.deepcopy(doc)
    stmt = statement_of(unsigned)
    swap(stmt)
    unsigned["dsseEnvelope"]["payload"] = b64(rfc8785.dumps(stmt))
    failing(verify_bundle(unsigned, attested.trust), "envelope signature", "does not verify")
    # The site itself signs the false digest: the signature is fine, the claim contradicts the ledger.
    lying = resign(doc, site_key(attested, "sakai"), "site:sakai", swap)
    r = verify_bundle(lying, attested.trust)
    assert r.check("envelope signature").passed
    failing(r, "claim matches ledger", "subjects do not match the ingested shards")


def test_resigned_with_untrusted_or_other_site_key(attested: Attested) -> None:
    doc = attested.doc()
    r = verify_bundle(resign(doc, Ed25519PrivateKey.generate(), "site:sakai"), attested.trust)
    failing(r, "envelope signature", "site:sakai", "does not verify")
    r = verify_bundle(resign(doc, Ed25519PrivateKey.generate(), "site:mallory"), attested.trust)
    failing(r, "envelope signature", "0 valid signature")
    # ohio is trusted, but the claim says sakai makes it
    r = verify_bundle(resign(doc, site_key(attested, "ohio"), "site:ohio"), attested.trust)
    failing(r, "envelope signature", "site:sakai")


def test_claim_citing_a_refusal_as_authority(attested: Attested) -> None:
    def cite_deny(st_: dict[str, Any]) -> None:
        p = st_["predicate"]
        deny = next(d for d in p["decisions"] if d["decision"] == "deny")
        p["keyReleases"][1]["decisionIndex"] = deny["index"]

    r = verify_bundle(resign(attested.doc(), site_key(attested, "sakai"), "site:sakai", cite_deny), attested.trust)
    failing(r, "decisions", "not allow")
    failing(r, "claim matches ledger", "decision_index")


def test_trust_root_moves_a_site_out_of_jurisdiction(attested: Attested, tmp_path: Path) -> None:
    d = json.loads(attested.trust_path.read_text())
    next(s for s in d["sites"] if s["name"] == "tokyo")["jurisdiction"] = "US"
    (tmp_path / "trust.json").write_text(json.dumps(d))
    r = verify_bundle(attested.bundle, TrustRoot.load(tmp_path / "trust.json"))
    failing(r, "jurisdictions", "site tokyo", "in US per the trust root, outside the allowed jurisdictions JP")
    assert r.failed == ["jurisdictions"]


def test_min_witnesses_larger_than_available(attested: Attested) -> None:
    r = verify_bundle(attested.bundle, attested.trust, min_witnesses=3)
    failing(r, "witness cosignatures", "2 trust-root witness cosignature(s) verify", "3 required")
    assert r.failed == ["witness cosignatures"]
    with pytest.raises(ValueError):
        verify_bundle(attested.bundle, attested.trust, min_witnesses=-1)


# --- attesting -------------------------------------------------------------------------------------


def test_fresh_checkpoint_withdrawal_and_refusals(attested: Attested, tmp_path: Path) -> None:
    shutil.copytree(attested.root, tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(ValidationError, match="holds no shard"):
            attest_dataset(ws, "furnace", site="ohio")
        with pytest.raises(OnshoreError, match="no dataset named"):
            attest_dataset(ws, "nope")
        with pytest.raises(OnshoreError, match="no model named"):
            attest_model(ws, "m")
        D.withdraw(ws, "furnace", "steelco")
        # the stored (cosigned) checkpoint does not cover the withdrawal: a fresh one, uncosigned
        bundle = attest_dataset(ws, "furnace", site="tokyo")
        size = ws.ledger.size()
    p = statement_of(bundle)["predicate"]
    assert p["attester"] == {"site": "tokyo", "jurisdiction": "JP"}
    assert p["withdrawal"] is not None and {s["site"] for s in p["withdrawal"]["shredded"]} == {"sakai", "tokyo"}
    r = verify_bundle(bundle, attested.trust)
    assert r.ok and r.attester == "tokyo" and r.checkpoint_size == size - 1 and r.witnesses == ()
    failing(verify_bundle(bundle, attested.trust, min_witnesses=1), "witness cosignatures", "0 trust-root")
