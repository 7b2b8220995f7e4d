"""Stale and partial proofs: `onshore verify --max-age` refuses a bundle whose checkpoint was witnessed too
long ago; chain links show a bundle that omits an entry; an update shows a later withdrawal."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from onshore.attest.update import make_update
from onshore.attest.verify import verify_bundle
from onshore.catalog.db import open_engine
from onshore.cli.app import main
from onshore.errors import IntegrityError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import merkle
from onshore.ledger.entries import Draft, sign_entry
from onshore.ledger.log import Ledger, ledger_heads, ledger_metadata
from onshore.ledger.subjects import subjects_of
from onshore.ledger.witness import Witness
from onshore.workspace import Workspace
from onshore.workspace import datasets as D
from test_attest import Attested, attested, failing, resign, site_key, statement_of  # noqa: F401


def _witnessed_at(a: Attested) -> dt.datetime:
    note = a.doc()["checkpoint"]
    ts = max(c.timestamp for c in ckpt.verified_cosignatures(note, [w.vkey for w in a.trust.witnesses]))
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def test_max_age_refuses_an_old_checkpoint(attested: Attested) -> None:  # noqa: F811
    seen = _witnessed_at(attested)
    fresh = verify_bundle(attested.bundle, attested.trust, 2, dt.timedelta(days=30), now=seen + dt.timedelta(days=1))
    assert fresh.ok, fresh.failed
    stale = verify_bundle(attested.bundle, attested.trust, 2, dt.timedelta(days=30), now=seen + dt.timedelta(days=31))
    failing(stale, "freshness", "more than the maximum age 30 days")
    assert verify_bundle(attested.bundle, attested.trust, 2).check("freshness").passed


def test_max_age_needs_a_witnessed_checkpoint(attested: Attested) -> None:  # noqa: F811
    from dataclasses import replace

    untrusting = replace(attested.trust, witnesses=[])
    failing(verify_bundle(attested.bundle, untrusting, 0, dt.timedelta(days=365)), "freshness",
            "no trust-root witness cosigned")


def test_cli_max_age(attested: Attested, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    args = ["verify", str(attested.scratch / "bundle.json"), "--trust-root", str(attested.trust_path)]
    assert main([*args, "--max-age", "30d"]) == 0
    assert main([*args, "--max-age", "0s"]) == 1
    assert "freshness" in capsys.readouterr().err
    assert main([*args, "--max-age", "soon"]) == 1
    assert "--max-age 'soon'" in capsys.readouterr().err


# --- completeness: every entry about a dataset links to the previous one ---------------------------


def _chain_of(ws, name: str, size: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [e.index for e in ws.ledger.entries(0, size)
            if f"dataset:{name}" in subjects_of(e.entry.kind, e.entry.body)]


def test_bundle_carries_the_whole_chain(attested: Attested) -> None:  # noqa: F811
    doc = attested.doc()
    r = verify_bundle(doc, attested.trust, 2)
    assert r.ok, r.failed
    assert "from its first entry" in r.check("completeness").message
    with Workspace.open(attested.root) as ws:
        chain = _chain_of(ws, "furnace", r.checkpoint_size)
        entries = {e.index: e.entry for e in ws.ledger.entries(0, r.checkpoint_size)}
    assert [e["index"] for e in doc["entries"]] == chain
    # each entry about the dataset names the one before it (index and leaf hash); the first names none
    assert entries[chain[0]].links == {"dataset:furnace": None}
    for prev, cur in zip(chain, chain[1:], strict=False):
        link = entries[cur].links["dataset:furnace"]
        assert link["index"] == prev
    assert all(entries[i].links is None for i in entries if i not in chain and not subjects_of(
        entries[i].kind, entries[i].body))


def test_dropping_an_entry_from_a_bundle_is_caught(attested: Attested) -> None:  # noqa: F811
    for at in (0, 3, -1):  # the first entry, one in the middle, the head
        doc = attested.doc()
        gone = doc["entries"].pop(at)
        failing(verify_bundle(doc, attested.trust), "completeness", f"entry {gone['index']}", "missing")


def test_a_claim_that_hides_a_refusal_is_caught(attested: Attested) -> None:  # noqa: F811
    # The attesting site leaves the refused copy to ohio out of its claim and out of the bundle:
    # everything it still says is true and signed, so only the chain shows the gap.
    doc = attested.doc()
    hidden = [d["index"] for d in statement_of(doc)["predicate"]["decisions"] if d["decision"] == "deny"]
    assert len(hidden) == 1

    def hide(st_: dict) -> None:  # type: ignore[type-arg]
        p = st_["predicate"]
        p["decisions"] = [d for d in p["decisions"] if d["index"] not in hidden]

    forged = resign(doc, site_key(attested, "sakai"), "site:sakai", hide)
    forged["entries"] = [e for e in forged["entries"] if e["index"] not in hidden]
    r = verify_bundle(forged, attested.trust, 2)
    assert r.failed == ["completeness"], [(c.name, c.message) for c in r.checks if not c.passed]
    assert f"entry {hidden[0]}" in r.check("completeness").message
    # carrying the refusal but leaving it out of the claim is caught too
    forged = resign(doc, site_key(attested, "sakai"), "site:sakai", hide)
    failing(verify_bundle(forged, attested.trust, 2), "completeness", f"entry {hidden[0]} (decision)",
            "not in the claim")


def test_head_note_must_be_the_logs_for_this_tree(attested: Attested) -> None:  # noqa: F811
    doc = attested.doc()
    doc["subjectHead"] = doc["subjectHead"].replace("dataset:furnace", "dataset:other")
    failing(verify_bundle(doc, attested.trust), "completeness", "subjectHead")
    doc = attested.doc()
    del doc["subjectHead"]  # a bundle from before chain links
    failing(verify_bundle(doc, attested.trust), "completeness", "no subjectHead")


def test_ledger_verify_catches_a_broken_link(attested: Attested, tmp_path: Path) -> None:  # noqa: F811
    shutil.copytree(attested.root, tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        ws.verify_ledger()
        chain = _chain_of(ws, "furnace", ws.ledger.size())
        # point the heads index at an older entry: the next entry about the dataset links past the
        # newest one, and `ledger verify` names the break
        old = ws.ledger.get(chain[-3])
        with ws.ledger.engine.begin() as conn:
            conn.execute(update(ledger_heads).where(ledger_heads.c.subject == "dataset:furnace").values(
                idx=old.index, leaf_hash=merkle.leaf_hash(old.leaf)))
        with pytest.raises(IntegrityError, match="ledger_heads table disagrees"):
            ws.verify_ledger()
        D.read(ws, "furnace", "tokyo", "fine-tuning")
        with pytest.raises(IntegrityError, match=f"links dataset:furnace to entry {chain[-3]}, but the previous "
                                                 f"entry about it is entry {chain[-1]}"):
            ws.verify_ledger()


def test_concurrent_writers_never_share_a_predecessor(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    url = f"sqlite:///{tmp_path / 'l.db'}"
    key = Ed25519PrivateKey.generate()
    Ledger(open_engine(url, ledger_metadata, create=True)).append([Draft("decision", "log", {"x": 0}, key)])

    def writer(w: int) -> None:
        lg = Ledger(open_engine(url, ledger_metadata))  # its own engine: another connection, as another process
        for i in range(15):
            lg.append([Draft("data.read", "log", {"dataset": f"d{i % 2}", "w": w, "i": i}, key)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lg = Ledger(open_engine(url, ledger_metadata))
    assert lg.verify(lambda _a: key.public_key()).size == 61
    prevs = [e.entry.links[f"dataset:d{e.entry.body['i'] % 2}"] for e in lg.entries(1)]
    named = [p["index"] for p in prevs if p is not None]
    assert len(named) == len(set(named)) == 58 and sum(p is None for p in prevs) == 2
    assert [e.index for e in lg.subject_entries("dataset:d1")] == [
        e.index for e in lg.entries(1) if e.entry.body["dataset"] == "d1"]
    # a pre-signed entry about a subject cannot bypass the linking
    with pytest.raises(ValueError, match="as a Draft"):
        lg.append([sign_entry("data.read", "log", {"dataset": "d1"}, key)])


def test_a_ledger_without_the_heads_index_gets_one(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    url = f"sqlite:///{tmp_path / 'l.db'}"
    key = Ed25519PrivateKey.generate()
    lg = Ledger(open_engine(url, ledger_metadata, create=True))
    lg.append([Draft("data.read", "log", {"dataset": "a", "i": i}, key) for i in range(3)])
    with lg.engine.begin() as conn:
        ledger_heads.drop(conn)  # as in a ledger made before the index existed
    lg = Ledger(open_engine(url, ledger_metadata))
    lg.append([Draft("data.read", "log", {"dataset": "a", "i": 3}, key)])
    assert lg.get(3).entry.links == {"dataset:a": {"index": 2, "leaf_hash": merkle.leaf_hash(lg.get(2).leaf).hex()}}
    lg.verify(lambda _a: key.public_key())


# --- updates: a newer witnessed checkpoint shows a withdrawal ---------------------------------------


@pytest.fixture
def withdrawn_later(attested: Attested, tmp_path: Path) -> tuple[Path, dict, dict, int]:  # noqa: F811
    """A copy of the workspace where the bundle's dataset is withdrawn afterwards and a newer
    checkpoint is cosigned by the same witnesses: (workspace, update before, update after, index)."""
    shutil.copytree(attested.root, tmp_path / "ws")
    for w in ("w1", "w2"):
        shutil.copytree(attested.scratch / w, tmp_path / w)
    since = verify_bundle(attested.bundle, attested.trust).checkpoint_size
    with Workspace.open(tmp_path / "ws") as ws:
        def cosign() -> None:
            note = ws.make_checkpoint()
            size = int(note.split("\n")[1])
            for w in ("w1", "w2"):
                witness = Witness.open(tmp_path / w)
                old = witness.logs()[ws.origin].size
                ws.add_cosignatures(witness.cosign(note, ws.log_vkey, ws.ledger.consistency_proof(old, size)))

        D.read(ws, "furnace", "tokyo", "fine-tuning")
        cosign()
        before = make_update(ws, "furnace", since)
        D.withdraw(ws, "furnace", "steelco")
        index = next(ws.ledger.entries(kinds=["consent.withdraw"])).index
        cosign()
        after = make_update(ws, "furnace", since)
    return tmp_path / "ws", before, after, index


def test_update_shows_a_withdrawal(attested: Attested, withdrawn_later) -> None:  # noqa: F811
    _, before, after, index = withdrawn_later
    assert verify_bundle(attested.bundle, attested.trust, 2).ok  # alone, the old bundle still verifies
    r = verify_bundle(attested.bundle, attested.trust, 2, update=before)
    assert r.ok, [(c.name, c.message) for c in r.checks if not c.passed]
    assert "not withdrawn up to the checkpoint" in r.check("update").message
    r = verify_bundle(attested.bundle, attested.trust, 2, update=after)
    assert r.failed == ["update"]
    failing(r, "update", f"withdrawn at ledger index {index}")


def test_an_abandonment_signed_over_a_withdrawal_does_not_hide_it(attested: Attested, withdrawn_later,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    """Onshore rolls a withdrawal forward and never abandons one; a ``data.abandoned`` entry that
    claims to close a ``consent.withdraw`` (signed by hand with the log key) must not make an
    auditor's update say "not withdrawn"."""
    root, _, _, index = withdrawn_later
    since = verify_bundle(attested.bundle, attested.trust).checkpoint_size
    with Workspace.open(root) as ws:
        ws.record("data.abandoned", "log", {"attempt": 999, "op": "withdraw", "dataset": "furnace", "site": None,
                                           "actor": "member:steelco", "decision_index": index - 1,
                                           "closes": [index], "reason": "forged"})
        note = ws.make_checkpoint()
        size = int(note.split("\n")[1])
        for w in ("w1", "w2"):
            witness = Witness.open(tmp_path / w)
            old = witness.logs()[ws.origin].size
            ws.add_cosignatures(witness.cosign(note, ws.log_vkey, ws.ledger.consistency_proof(old, size)))
        forged = make_update(ws, "furnace", since)
    failing(verify_bundle(attested.bundle, attested.trust, 2, update=forged), "update",
            f"withdrawn at ledger index {index}")


def test_an_update_that_hides_the_withdrawal_is_caught(attested: Attested, withdrawn_later) -> None:  # noqa: F811
    _, _, after, index = withdrawn_later
    doc = copy.deepcopy(after)
    doc["entries"] = [e for e in doc["entries"] if e["index"] < index]
    failing(verify_bundle(attested.bundle, attested.trust, 2, update=doc), "update", "missing")
    doc = copy.deepcopy(after)
    doc["consistencyProof"] = doc["consistencyProof"][1:]
    failing(verify_bundle(attested.bundle, attested.trust, 2, update=doc), "update", "does not extend")
    doc = copy.deepcopy(after)
    doc["sinceSize"] += 1
    failing(verify_bundle(attested.bundle, attested.trust, 2, update=doc), "update", "--since-size")
    # the newer checkpoint must meet the same witness bar as the bundle's
    failing(verify_bundle(attested.bundle, attested.trust, 3, update=after), "update", "3 required")


def test_cli_attest_update_then_verify(attested: Attested, withdrawn_later, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _, index = withdrawn_later
    since = verify_bundle(attested.bundle, attested.trust).checkpoint_size
    monkeypatch.setenv("ONSHORE_WORKSPACE", str(root))
    out = tmp_path / "update.json"
    assert main(["attest", "update", "furnace", "--since-size", str(since), "-o", str(out)]) == 0
    args = ["verify", str(attested.scratch / "bundle.json"), "--trust-root", str(attested.trust_path),
            "--min-witnesses", "2"]
    capsys.readouterr()
    assert main(args) == 0
    assert main([*args, "--update", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"withdrawn at ledger index {index}" in captured.out and "update" in captured.err
    assert main(["attest", "update", "furnace", "--since-size", "100000", "-o", str(out)]) == 1
    assert "--since-size 100000" in capsys.readouterr().err
