"""The signed ledger, not the catalog, says what is allowed (issue 17, section 1; section 2's key release).

Each test edits the catalog database directly, as an insider with filesystem access would (its own
SQLAlchemy engine on the catalog's URL, outside any Onshore code), then checks that a process
opening the workspace afterwards decides by the signed entries: the edited row is refused with an
IntegrityError naming the row and the entry, or simply has no effect, and ``onshore doctor``
names it. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, delete, insert, select, update

from conftest import POLICY_JP, build_consortium, write_frames
from onshore.catalog import schema as T
from onshore.errors import IntegrityError, PolicyDenied
from onshore.keys.envelope import new_data_key
from onshore.keys.keystore import KeyStore, public_key_b64
from onshore.ledger.log import ledger_attempts
from onshore.residency.pdp import Request, model_request
from onshore.residency.policy import parse_policy
from onshore.serve import tokens
from onshore.workspace import Workspace, datasets, doctor, keyservice, models, registry
from onshore.workspace.attempts import ABANDONED

POLICY_KEEP = POLICY_JP.replace('"stop-serving"', '"keep"')


@pytest.fixture(params=["sqlite", "postgresql"])
def signed_ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    """A consortium with two ingested datasets at sakai: ``furnace`` (stop-serving) and ``plant`` (keep)."""
    if request.param == "sqlite":
        ws = Workspace.init(tmp_path / "ws", "signed-rules")
    else:
        ws = Workspace.init(tmp_path / "ws", "signed-rules", catalog_url=request.getfixturevalue("fresh_postgres_db"),
                            ledger_url=request.getfixturevalue("fresh_postgres_db"))
    build_consortium(ws, tmp_path)
    for seed, (name, owner, policy) in enumerate((("furnace", "steelco", POLICY_JP), ("plant", "autoco", POLICY_KEEP))):
        path = tmp_path / f"{name}.toml"
        path.write_text(policy)
        datasets.ingest(ws, name, owner, "sakai", path, "furnace-line-3",
                        [write_frames(tmp_path / f"{name}.parquet", seed=seed)])
    yield ws
    ws.close()


def insider(ws: Workspace) -> Engine:
    """An engine of the insider's own on the catalog database (not the workspace's)."""
    return create_engine(ws.catalog.url.render_as_string(hide_password=False))


def edit(ws: Workspace, *statements) -> None:  # type: ignore[no-untyped-def]
    engine = insider(ws)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(s)
    engine.dispose()


def reopen(ws: Workspace) -> Workspace:
    return Workspace.open(ws.root)


def signed_findings(ws: Workspace) -> list[doctor.Finding]:
    return [f for f in doctor.run(ws).findings if f.check == "signed-rules"]


def grant_index(ws: Workspace, dataset: str) -> int:
    return next(e.index for e in ws.ledger.entries(kinds=("consent.grant",)) if e.entry.body["dataset"] == dataset)


def release_model(ws: Workspace, name: str, trained_on: list[tuple[str, str]], base: str | None = None) -> int:
    """Register a model as a finished training job would (catalog rows, model.release, key wrap at tokyo)."""
    return models.release(ws, models.ModelRelease(
        name=name, site="tokyo", purpose="fine-tuning", size="tiny", config={}, folder=f"models/{name}", files={},
        parameters=1, steps=1, world_size=1, metrics={}, base=base,
        datasets=[{"name": d, "owner": o, "embodiment": "furnace-line-3", "weight": 1.0, "shards": [],
                   "decision_index": 0} for d, o in trained_on]), new_data_key())


# -- a dataset's policy ----------------------------------------------------------------------------

def test_a_purpose_added_to_the_catalog_policy_is_refused_not_allowed(signed_ws: Workspace) -> None:
    ws = signed_ws
    asking = Request("site:sakai", "train", "furnace", "sakai", "predictive-maintenance")
    assert not ws.pdp().decide(asking).allowed
    widened = POLICY_JP.replace('"fine-tuning"]', '"fine-tuning", "predictive-maintenance"]')
    edit(ws, update(T.datasets).where(T.datasets.c.name == "furnace").values(policy=widened))
    later = reopen(ws)
    idx = grant_index(ws, "furnace")
    with pytest.raises(IntegrityError, match=rf"datasets/furnace disagrees with ledger entry {idx} \(consent.grant\)"):
        later.decide(asking)
    with pytest.raises(IntegrityError, match="datasets/furnace"):
        later.dataset_policy("furnace")
    (found,) = [f for f in signed_findings(later) if "furnace" in f.subject]
    assert f"ledger entry {idx}" in found.problem and "usage policy differs" in found.problem
    # restoring the row restores the decisions, and a reformatted but equal policy is fine
    edit(ws, update(T.datasets).where(T.datasets.c.name == "furnace").values(policy="# same\n" + POLICY_JP))
    assert not reopen(ws).decide(asking)[0].allowed
    assert signed_findings(reopen(ws)) == []
    later.close()


def test_a_dataset_owner_changed_in_the_catalog_is_refused(signed_ws: Workspace) -> None:
    ws = signed_ws
    edit(ws, update(T.datasets).where(T.datasets.c.name == "furnace").values(owner="autoco"))
    with pytest.raises(IntegrityError, match=r"datasets/furnace disagrees .*owner 'autoco', but the grant says "
                                             "'steelco'"):
        reopen(ws).pdp()
    assert any("furnace" in f.subject for f in signed_findings(ws))


WIDE = POLICY_JP.replace('"fine-tuning"]', '"fine-tuning", "predictive-maintenance"]')


def test_a_dataset_name_reused_after_its_rows_are_deleted_keeps_the_first_grant(signed_ws: Workspace,
                                                                                  tmp_path: Path) -> None:
    ws = signed_ws
    release_model(ws, "m", [("plant", "autoco")])
    asking = model_request("site:tokyo", "read", "m", "tokyo", "predictive-maintenance")
    assert not ws.decide(asking)[0].allowed
    first = grant_index(ws, "plant")
    # the insider removes every catalog row of autoco's plant, then ingests a "plant" of steelco's
    # with a looser policy, hoping the models trained on the first one follow it
    edit(ws, delete(T.model_datasets).where(T.model_datasets.c.dataset == "plant"),
         delete(T.key_wraps).where(T.key_wraps.c.dataset == "plant"),
         delete(T.shards).where(T.shards.c.dataset == "plant"), delete(T.datasets).where(T.datasets.c.name == "plant"))
    later = reopen(ws)
    (tmp_path / "wide.toml").write_text(WIDE)
    with pytest.raises(IntegrityError, match=rf"dataset 'plant' already exists in the ledger \(consent.grant, ledger "
                                             rf"entry {first}\) but the catalog has no row datasets/plant"):
        datasets.ingest(later, "plant", "steelco", "sakai", tmp_path / "wide.toml", "furnace-line-3",
                        [write_frames(tmp_path / "again.parquet", seed=5)])
    assert grant_index(ws, "plant") == first and len(list(ws.ledger.entries(kinds=("consent.grant",)))) == 2
    # a second grant of the name signed anyway (an older version, by hand) does not replace the first
    wide = parse_policy(WIDE, "wide.toml")
    again = later.record("consent.grant", "member:steelco", {"dataset": "plant", "owner": "steelco",
                                                            "policy": wide.to_json(), "policy_hash": wide.hash})
    edit(ws, insert(T.datasets).values(name="plant", owner="steelco", embodiment="furnace-line-3", policy=WIDE,
                                       policy_hash=wide.hash, status="active", episodes=1, frames=1,
                                       created_at="2026-01-01T00:00:00Z"))
    with pytest.raises(IntegrityError, match=rf"datasets/plant disagrees with ledger entry {first} \(consent.grant\)"
                                             rf".*granted again later \(ledger entries \[{again}\]\)"):
        reopen(ws).decide(asking)
    (found,) = [f for f in signed_findings(ws) if "plant" in f.subject]
    assert f"ledger entry {first}" in found.problem and "owner 'steelco'" in found.problem
    later.close()


# -- a model's lineage -----------------------------------------------------------------------------

def test_deleting_lineage_rows_does_not_revive_a_stop_serving_model(signed_ws: Workspace) -> None:
    ws = signed_ws
    release_model(ws, "m1", [("furnace", "steelco"), ("plant", "autoco")])
    release_model(ws, "m2", [("plant", "autoco")], base="m1")
    datasets.withdraw(ws, "furnace", "steelco")
    # the insider drops furnace from m1's lineage rows, and m1 (m2's base) from the catalog
    edit(ws, delete(T.model_datasets).where(T.model_datasets.c.dataset == "furnace"))
    later = reopen(ws)
    for model in ("m1", "m2"):
        decision = later.decide(model_request("site:tokyo", "serve", model, "tokyo", "fine-tuning"))[0]
        assert not decision.allowed and f"model/{model}/dataset/furnace/withdrawn-stop-serving" in decision.rules
        assert models.status(later, model).status == "blocked"
    # ... then m2's base: its base column, and m1's rows altogether
    edit(ws, update(T.models).where(T.models.c.name == "m2").values(base=None),
         delete(T.model_key_wraps).where(T.model_key_wraps.c.model == "m1"),
         delete(T.model_datasets).where(T.model_datasets.c.model == "m1"),
         delete(T.models).where(T.models.c.name == "m1"))
    later = reopen(ws)
    decision = later.decide(model_request("site:tokyo", "serve", "m2", "tokyo", "fine-tuning"))[0]
    assert not decision.allowed and "model/m2/dataset/furnace/withdrawn-stop-serving" in decision.rules
    # the model key release refuses too (section 2), and the lineage shown is the signed one
    with pytest.raises(PolicyDenied, match="withdrawn-stop-serving"):
        keyservice.release_model(later, "m2", "tokyo", "serve", "fine-tuning")
    assert [level["model"] for level in models.lineage(later, "m2")] == ["m2", "m1"]
    assert "furnace" in {d["dataset"] for level in models.lineage(later, "m2") for d in level["datasets"]}
    assert "m2" in {m["model"] for m in models.derived_from(later, "furnace")}
    # the evaluation (read) of m2 is still allowed: stop-serving stops serving and export only
    assert keyservice.release_model(later, "m2", "tokyo", "read", "fine-tuning").key
    (found,) = signed_findings(later)
    assert found.subject == "model 'm2'" and "says base None" in found.problem and "says 'm1'" in found.problem
    later.close()


def test_a_base_model_name_trained_again_does_not_launder_a_fine_tune(signed_ws: Workspace) -> None:
    ws = signed_ws
    first = release_model(ws, "m1", [("furnace", "steelco"), ("plant", "autoco")])
    release_model(ws, "m2", [("plant", "autoco")], base="m1")
    datasets.withdraw(ws, "furnace", "steelco")
    serving = model_request("site:tokyo", "serve", "m2", "tokyo", "fine-tuning")
    assert not ws.decide(serving)[0].allowed
    # the insider deletes the base's rows and trains a new "m1" on plant alone: m2's release names
    # its base by name only, so the new release must not stand in for the one m2 was tuned from
    edit(ws, delete(T.model_key_wraps).where(T.model_key_wraps.c.model == "m1"),
         delete(T.model_datasets).where(T.model_datasets.c.model == "m1"),
         delete(T.models).where(T.models.c.name == "m1"))
    again = release_model(reopen(ws), "m1", [("plant", "autoco")])
    later = reopen(ws)
    decision = later.decide(serving)[0]
    assert not decision.allowed and "model/m2/dataset/furnace/withdrawn-stop-serving" in decision.rules
    with pytest.raises(PolicyDenied, match="withdrawn-stop-serving"):
        keyservice.release_model(later, "m2", "tokyo", "serve", "fine-tuning")
    assert models.status(later, "m2").status == "blocked"
    # the name's later release adds to its lineage; pointing the row back at the first changes nothing
    assert {d.name for d in models.lineage_datasets(later, "m1")} == {"furnace", "plant"}
    edit(ws, update(T.models).where(T.models.c.name == "m1").values(ledger_index=first))
    assert not reopen(ws).decide(serving)[0].allowed
    found = [f for f in signed_findings(later) if f.subject == "model 'm1'"]
    assert any(f"later model.release entries [{again}]" in f.problem for f in found)
    later.close()


def test_a_model_row_citing_another_entry_is_refused(signed_ws: Workspace) -> None:
    ws = signed_ws
    release_model(ws, "m1", [("furnace", "steelco")])
    edit(ws, update(T.models).where(T.models.c.name == "m1").values(ledger_index=grant_index(ws, "plant")))
    with pytest.raises(IntegrityError, match="model 'm1': the catalog cites ledger entry"):
        reopen(ws).pdp()
    assert any(f.subject == "model 'm1'" for f in signed_findings(ws))


def test_lineage_rows_that_differ_from_the_release_are_a_doctor_finding(signed_ws: Workspace) -> None:
    ws = signed_ws
    release_model(ws, "m1", [("furnace", "steelco"), ("plant", "autoco")])
    edit(ws, delete(T.model_datasets).where(T.model_datasets.c.dataset == "furnace"))
    (found,) = signed_findings(ws)
    assert found.subject == "model 'm1'" and "model_datasets/m1" in found.problem and "model.release" in found.problem


# -- the attempt journal and 'doctor --repair' ---------------------------------------------------------

def forge_journal_row(ws: Workspace, op: str, dataset: str, actor: str, decision: int, state: str,
                      outcome: list[int]) -> None:
    """A row in the ledger database's attempt journal (beside the signed tree), as an insider writes it."""
    engine = create_engine(ws.ledger.engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        conn.execute(insert(ledger_attempts).values(
            id=uuid.uuid4().hex, op=op, dataset=dataset, site=None, actor=actor, decision_index=decision, state=state,
            outcome=json.dumps(outcome), started_at="2026-01-01T00:00:00Z"))
    engine.dispose()


def test_a_forged_journal_row_cannot_have_a_withdrawal_abandoned(signed_ws: Workspace) -> None:
    ws = signed_ws
    release_model(ws, "m1", [("furnace", "steelco")])
    datasets.withdraw(ws, "furnace", "steelco")
    (withdrawal,) = ws.ledger.entries(kinds=("consent.withdraw",))
    serving = model_request("site:tokyo", "serve", "m1", "tokyo", "fine-tuning")
    decision = withdrawal.entry.body["decision_index"]
    # a dead "withdraw" attempt citing the withdrawal's decision (and, in one row, the withdrawal)
    forge_journal_row(ws, "withdraw", "furnace", "member:steelco", decision, "open", [withdrawal.index])
    forge_journal_row(ws, "withdraw", "furnace", "member:steelco", decision, "open", [])
    size = ws.ledger.size()
    report = doctor.run(reopen(ws), repair=True)
    assert ws.ledger.size() == size  # nothing closed, nothing signed
    problems = [f.problem for f in report.findings if f.check == "attempts"]
    assert len(problems) == 2 and all(not f.repairable for f in report.findings if f.check == "attempts")
    assert any(f"lists outcome entries [{withdrawal.index}]" in p for p in problems)
    assert any(f"its decision (ledger entry {decision}) is cited by ledger entries [{withdrawal.index}" in p
               for p in problems)
    assert not reopen(ws).decide(serving)[0].allowed
    # and a data.abandoned that closes a withdrawal anyway (signed by hand, or by an older version) voids nothing
    ws.record(ABANDONED, "log", {"attempt": None, "op": "withdraw", "dataset": "furnace", "site": None, "actor": None,
                                 "decision_index": decision, "closes": [decision, withdrawal.index], "reason": "x"})
    later = reopen(ws)
    d = later.decide(serving)[0]
    assert not d.allowed and "model/m1/dataset/furnace/withdrawn-stop-serving" in d.rules
    with pytest.raises(PolicyDenied, match="withdrawn-stop-serving"):
        keyservice.release_model(later, "m1", "tokyo", "serve", "fine-tuning")
    assert not [f for f in doctor.run(later).findings if "does not record a withdrawal" in f.problem]
    later.close()


def test_doctor_repair_does_not_close_the_grant_of_a_dataset_whose_rows_were_deleted(signed_ws: Workspace) -> None:
    ws = signed_ws
    release_model(ws, "m", [("plant", "autoco")])
    first = grant_index(ws, "plant")
    with ws.catalog.connect() as conn:
        shard = conn.execute(select(T.shards.c.path).where(T.shards.c.dataset == "plant")).scalar()
    edit(ws, delete(T.model_datasets).where(T.model_datasets.c.dataset == "plant"),
         delete(T.key_wraps).where(T.key_wraps.c.dataset == "plant"),
         delete(T.shards).where(T.shards.c.dataset == "plant"), delete(T.datasets).where(T.datasets.c.name == "plant"))
    size = ws.ledger.size()
    report = doctor.run(reopen(ws), repair=True)
    (found,) = [f for f in report.findings if f.subject == "dataset 'plant'" and f.check == "catalog-ledger"]
    assert not found.repairable and found.repaired is None and "rest on them" in found.problem
    assert ws.ledger.size() == size and grant_index(ws, "plant") == first
    assert reopen(ws).ledger_governance().grants["plant"].index == first
    assert (Path(registry.get_site(ws, "sakai").root) / shard).is_file()  # kept for the catalog's restore


# -- serving tokens ----------------------------------------------------------------------------------

def test_a_token_digest_written_into_the_catalog_is_refused(signed_ws: Workspace) -> None:
    ws = signed_ws
    forged = tokens.PREFIX + "x" * 43
    T.metadata.create_all(ws.catalog, tables=[T.serve_tokens])
    edit(ws, insert(T.serve_tokens).values(site="tokyo", client="intruder", created_at="2026-01-01T00:00:00Z",
                                           token_sha256=hashlib.sha256(forged.encode()).hexdigest()))
    table = tokens.TokenTable(reopen(ws), "tokyo")
    assert table.check(f"Bearer {forged}") == tokens.Verdict(None, False, "unknown token")
    (found,) = signed_findings(ws)
    assert "serve_tokens" in found.problem and "intruder" in found.subject


def test_token_issue_and_revocation_are_ledger_entries(signed_ws: Workspace) -> None:
    ws = signed_ws
    token = tokens.issue(ws, "tokyo", "line-1")
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert [(e.entry.actor, e.entry.body) for e in ws.ledger.entries(kinds=("token.issue",))] == [
        ("site:tokyo", {"site": "tokyo", "client": "line-1", "token_sha256": digest})]
    assert token not in str([e.entry.body for e in ws.ledger.entries()])
    server = reopen(ws)
    table = tokens.TokenTable(server, "tokyo")
    assert table.check(f"Bearer {token}").ok
    other = reopen(ws)  # another process revokes
    assert tokens.revoke(other, "tokyo", "line-1") == 1
    table.refresh()
    assert table.check(f"Bearer {token}") == tokens.Verdict("line-1", False, "revoked")
    # an insider "un-revoking" in the catalog changes nothing
    T.metadata.create_all(ws.catalog, tables=[T.serve_tokens])
    edit(ws, update(T.serve_tokens).values(revoked_at=None))
    assert tokens.TokenTable(reopen(ws), "tokyo").check(f"Bearer {token}").reason == "revoked"
    assert [r["revoked_index"] is not None for r in tokens.list_tokens(ws, "tokyo")] == [True]
    server.close()
    other.close()


# -- other rows a decision reads -----------------------------------------------------------------------

def test_an_embodiment_with_widened_limits_is_refused(signed_ws: Workspace) -> None:
    ws = signed_ws
    with ws.catalog.connect() as conn:
        spec = conn.execute(select(T.embodiments.c.spec).where(T.embodiments.c.name == "furnace-line-3")).scalar()
    assert registry.get_embodiment(ws, "furnace-line-3").action[0].high == 100.0
    edit(ws, update(T.embodiments).values(spec=spec.replace("high = 100.0", "high = 1000.0", 1)))
    with pytest.raises(IntegrityError, match=r"embodiments/furnace-line-3: .*ledger entry \d+ \(embodiment.add\)"):
        registry.get_embodiment(reopen(ws), "furnace-line-3")
    assert any(f.subject == "embodiment 'furnace-line-3'" for f in signed_findings(ws))


def test_a_member_key_swapped_in_the_catalog_cannot_sign(signed_ws: Workspace, tmp_path: Path) -> None:
    ws = signed_ws
    keys = ws.keys_dir("member:steelco")
    shutil.move(keys, tmp_path / "old-keys")
    planted = KeyStore.create(keys, with_kek=False)
    edit(ws, update(T.members).where(T.members.c.name == "steelco").values(
        public_key=public_key_b64(planted.public_key())))
    later = reopen(ws)
    with pytest.raises(IntegrityError, match="catalog row members/steelco: its public key is not the one the ledger"):
        later.signer("member:steelco")
    # doctor's ledger check already fails (steelco's entries do not verify under the swapped key);
    # the signed-rules check names the row
    assert not doctor.run(ws).ok
    assert any(f.subject == "member 'steelco'" for f in doctor.check_signed_rules(ws))
    later.close()


# -- another process changes a rule while this one keeps its Workspace open (section 2) -------------

def _cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ONSHORE_WORKSPACE": str(ws.root), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "onshore", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=True)


def test_an_open_workspace_follows_rules_another_process_changed(signed_ws: Workspace, tmp_path: Path) -> None:
    ws = signed_ws
    release_model(ws, "m1", [("furnace", "steelco")])
    serving = model_request("site:tokyo", "serve", "m1", "tokyo", "fine-tuning")
    assert ws.decide(serving)[0].allowed  # this process has decided, and keeps its decision point
    assert keyservice.release_model(ws, "m1", "tokyo", "serve", "fine-tuning").key
    _cli(ws, "dataset", "withdraw", "furnace", "--member", "steelco")
    with pytest.raises(PolicyDenied, match="model/m1/dataset/furnace/withdrawn-stop-serving"):
        keyservice.release_model(ws, "m1", "tokyo", "serve", "fine-tuning")
    # consent given by another process: a new dataset becomes usable here without reopening
    (tmp_path / "new.toml").write_text(POLICY_KEEP)
    _cli(ws, "dataset", "ingest", "fresh", "--member", "autoco", "--site", "sakai", "--policy",
         str(tmp_path / "new.toml"), "--embodiment", "furnace-line-3",
         str(write_frames(tmp_path / "new.parquet", seed=7)))
    assert ws.decide(Request("site:tokyo", "copy", "fresh", "tokyo"))[0].allowed
    assert not ws.decide(Request("site:ohio", "copy", "fresh", "ohio"))[0].allowed

