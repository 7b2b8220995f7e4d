"""Promises that hold against an insider with filesystem access to the workspace and its sites.

Each test is one attack tried the way an insider would: hand-built or borrowed decisions, a
catalog backup restored after a withdrawal, an edited onshore.toml or catalog, names and principals
that smuggle paths or newlines, planted key files.
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from conftest import build_consortium, write_frames
from onshore.catalog import schema as T
from onshore.cli.app import main
from onshore.errors import IntegrityError, OnshoreError, PolicyDenied, ValidationError
from onshore.keys.envelope import unwrap_key
from onshore.keys.keystore import IDENTITY_FILE, KeyStore
from onshore.residency.pdp import Request
from onshore.workspace import Workspace, datasets, keyservice, registry
from onshore.workspace.config import CONFIG_FILE


def _ingest(ws: Workspace, tmp: Path, policy: Path, name: str = "furnace", site: str = "sakai") -> None:
    datasets.ingest(ws, name, "steelco", site, policy, "furnace-line-3", [write_frames(tmp / f"{name}.parquet")])


def _last(ws: Workspace, kind: str):  # type: ignore[no-untyped-def]
    return list(ws.ledger.entries(kinds=[kind]))[-1]


# ---- 1. the key service decides for itself ------------------------------------------------------

def test_key_service_takes_no_decision_from_its_caller() -> None:
    params = inspect.signature(keyservice.release).parameters
    assert "decision" not in params and "decision_index" not in params
    # on_allow only runs inside the service's own allow decision's transaction (a copy opens its
    # crash-protocol attempt there); it cannot supply or change a decision
    assert set(params) == {"ws", "dataset", "site", "action", "purpose", "copy_to", "on_allow"}


def test_forged_decision_cannot_release_a_key(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    """The caller wants a read for a purpose the policy does not allow. Whatever decision it built,
    the key service asks the decision point itself, records the deny, and releases nothing."""
    _ingest(ws, tmp_path, policy_file)
    releases = len(list(ws.ledger.entries(kinds=["key.release"])))
    with pytest.raises(PolicyDenied) as err:
        keyservice.release(ws, "furnace", "sakai", "read", purpose="marketing")
    assert "dataset/furnace/purposes" in err.value.rules
    deny = _last(ws, "decision")
    assert deny.entry.actor == "site:sakai" and deny.entry.body["decision"] == "deny"
    assert deny.entry.body["request"]["purpose"] == "marketing"
    assert len(list(ws.ledger.entries(kinds=["key.release"]))) == releases


def test_borrowed_decision_cannot_release_a_key(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    """An allow recorded for another site (tokyo) does not release at a site the policy forbids:
    the key service of ohio decides for ohio, and the copy there is refused."""
    _ingest(ws, tmp_path, policy_file)
    datasets.copy(ws, "furnace", "tokyo")
    allow = _last(ws, "decision")
    assert allow.entry.body["decision"] == "allow" and allow.entry.body["request"]["site"] == "tokyo"
    with pytest.raises(PolicyDenied) as err:
        keyservice.release(ws, "furnace", "sakai", "copy", copy_to="ohio")
    assert "dataset/furnace/jurisdictions" in err.value.rules
    # every release in the ledger cites a decision the key service made for exactly that release
    entries = {e.index: e.entry for e in ws.ledger.entries()}
    for e in ws.ledger.entries(kinds=["key.release"]):
        b = e.entry.body
        d = entries[b["decision_index"]]
        req = d.body["request"]
        assert d.kind == "decision" and d.body["decision"] == "allow" and b["decision_index"] < e.index
        assert (req["dataset"], req["action"], req["purpose"]) == (b["dataset"], b["action"], b["purpose"])
        assert req["site"] == b["site"] or (b["action"] == "copy" and req["principal"] == f"site:{req['site']}")


# ---- 2. crypto-shredding holds against a restored catalog backup --------------------------------

def _backup(db: Path, to: Path) -> None:
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)


def _restore(backup: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.unlink()
    _backup(backup, db)


def test_restored_catalog_backup_does_not_undo_withdrawal(tmp_path: Path, policy_file: Path) -> None:
    root = tmp_path / "ws"
    ws = build_consortium(Workspace.init(root, "t"), tmp_path)
    _ingest(ws, tmp_path, policy_file)
    datasets.copy(ws, "furnace", "tokyo")
    _backup(root / "catalog.db", tmp_path / "catalog-before.db")
    datasets.withdraw(ws, "furnace", "steelco")
    for site in ("sakai", "tokyo"):
        assert not ws.keystore(f"site:{site}").has_dataset_key("furnace")
    ws.close()

    _restore(tmp_path / "catalog-before.db", root / "catalog.db")
    with Workspace.open(root) as ws:
        with ws.catalog.connect() as conn:  # the backup brought the wraps and the "active" status back
            wraps = conn.execute(select(T.key_wraps.c.site, T.key_wraps.c.wrapped)
                                 .where(T.key_wraps.c.dataset == "furnace")).all()
            status = conn.execute(select(T.datasets.c.status)).scalar_one()
        assert status == "active" and len(wraps) == 2
        for action in ("read", "export"):
            with pytest.raises(PolicyDenied):
                datasets.read(ws, "furnace", "sakai", action=action)
        with pytest.raises(PolicyDenied):
            datasets.copy(ws, "furnace", "ohio", from_site="tokyo")
        # and even going around the key service, the restored wraps no longer open: the key that
        # wrapped them was in the site's custody and is gone
        for site, wrapped in wraps:
            store = KeyStore(root / "sites" / site / "keys")
            context = f"onshore-dataset-key:v1:furnace:{site}".encode()
            with pytest.raises(OnshoreError):
                unwrap_key(store.dataset_key("furnace"), bytes(wrapped), context)
            with pytest.raises(OnshoreError):
                unwrap_key(store.kek(), bytes(wrapped), context)
        ws.verify_ledger()


def test_key_service_refuses_a_dataset_withdrawn_in_the_ledger(ws: Workspace, tmp_path: Path,
                                                               policy_file: Path) -> None:
    """Even with the catalog's status edited back to active and its rule gone from the policy set."""
    _ingest(ws, tmp_path, policy_file)
    datasets.withdraw(ws, "furnace", "steelco")
    with ws.catalog.begin() as conn:
        conn.execute(update(T.datasets).values(status="active", withdrawn_at=None))
    ws.invalidate()
    with pytest.raises(PolicyDenied) as err:
        keyservice.release(ws, "furnace", "sakai", "read")
    assert err.value.rules == ["dataset/furnace/withdrawn"]  # the ledger's withdrawal is in the policy set
    with ws.catalog.begin() as conn:
        with pytest.raises(PolicyDenied, match="withdrawn"):
            keyservice.wrap_for_site(ws, conn, "furnace", "tokyo", b"k" * 32)


# ---- 3. workspace rules and site jurisdictions come from the ledger -----------------------------

def test_config_file_disagreeing_with_the_ledger_is_refused(tmp_path: Path, policy_file: Path) -> None:
    root = tmp_path / "ws"
    ws = build_consortium(Workspace.init(root, "kansai", jurisdiction="JP"), tmp_path)
    ws.close()
    cfg = root / CONFIG_FILE
    text = cfg.read_text()
    cfg.write_text(text.replace('jurisdiction = "JP"\n', ""))
    with pytest.raises(ValidationError, match="jurisdiction.*no jurisdiction rule.*'JP'"):
        Workspace.open(root)
    cfg.write_text(text.replace('jurisdiction = "JP"', 'jurisdiction = "US"'))
    with pytest.raises(ValidationError, match="'US'.*'JP'"):
        Workspace.open(root)
    cfg.write_text(text.replace('name = "kansai"', 'name = "other"'))
    with pytest.raises(ValidationError, match="name = 'other'"):
        Workspace.open(root)
    cfg.write_text(text)
    with Workspace.open(root) as ws:
        with pytest.raises(PolicyDenied) as err:
            _ingest(ws, tmp_path, policy_file, site="ohio")
        assert "workspace/jurisdiction-JP" in err.value.rules


def test_cli_names_the_config_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ws"
    Workspace.init(root, "kansai", jurisdiction="JP").close()
    cfg = root / CONFIG_FILE
    cfg.write_text(cfg.read_text().replace('jurisdiction = "JP"\n', ""))
    assert main(["-w", str(root), "site", "list"]) == 1
    assert "disagrees with the ledger" in capsys.readouterr().err


def test_site_jurisdiction_edited_in_the_catalog_is_refused(ws: Workspace, tmp_path: Path,
                                                            policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    with ws.catalog.begin() as conn:
        conn.execute(update(T.sites).where(T.sites.c.name == "ohio").values(jurisdiction="JP"))
    ws.invalidate()
    with pytest.raises(IntegrityError, match="site 'ohio': the catalog says jurisdiction JP, ledger entry"):
        datasets.copy(ws, "furnace", "ohio")
    assert not list(Path(registry.get_site(ws, "ohio").root).rglob("*.parquet"))


# ---- 4. one strict validator for names and principals; the signer is the actor ----------------

@pytest.mark.parametrize("name", ["sakai\n", "sakai\r", "ｓａｋａｉ", "sakaı", "sa\u200bkai", "../sakai", ""])
def test_names_must_match_in_full(ws: Workspace, name: str) -> None:
    with pytest.raises(ValidationError, match="invalid site name"):
        registry.add_site(ws, name, "US", "storage")
    assert [s.name for s in registry.list_sites(ws)] == ["ohio", "sakai", "tokyo"]


@pytest.mark.parametrize("principal", ["site:../members/steelco", "member:steelco\n", "site:", "sakai",
                                       "member:../../keys/log", "log", "site:SAKAI"])
def test_bad_principals_are_refused_and_the_ledger_still_verifies(
        ws: Workspace, tmp_path: Path, policy_file: Path, principal: str, capsys: pytest.CaptureFixture[str]) -> None:
    _ingest(ws, tmp_path, policy_file)
    size = ws.ledger.size()
    with pytest.raises(ValidationError, match="invalid principal"):
        ws.decide(Request(principal, "read", "furnace", "sakai"))
    assert main(["-w", str(ws.root), "policy", "check", "--action", "read", "--dataset", "furnace",
                 "--site", "sakai", "--principal", principal]) == 1
    assert "invalid principal" in capsys.readouterr().err
    assert ws.ledger.size() == size
    ws.verify_ledger()


def test_unregistered_actor_cannot_sign(ws: Workspace) -> None:
    with pytest.raises(ValidationError, match="not registered"):
        ws.decide(Request("member:nobody", "ingest", "furnace", "sakai"))
    ws.verify_ledger()


def test_a_planted_key_file_cannot_sign_for_an_actor(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    ws = build_consortium(Workspace.init(root, "t"), tmp_path)
    ws.close()
    # the insider replaces steelco's identity with autoco's key, hoping to sign as steelco
    target = root / "members" / "steelco" / "keys" / IDENTITY_FILE
    target.write_bytes((root / "members" / "autoco" / "keys" / IDENTITY_FILE).read_bytes())
    with Workspace.open(root) as ws:
        with pytest.raises(IntegrityError, match="not the public key registered for member:steelco"):
            ws.decide(Request("member:steelco", "ingest", "furnace", "sakai"))
        ws.verify_ledger()


def test_operator_and_workspace_name_text_is_checked(ws: Workspace, tmp_path: Path) -> None:
    for bad in ("Sakai\nDC", "Sakai\u202eCD", "Cafe\u0301"):
        with pytest.raises(ValidationError):
            registry.add_site(ws, "osaka", "JP", "storage", operator=bad)
        with pytest.raises(ValidationError):
            Workspace.init(tmp_path / "other", bad)
    registry.add_site(ws, "osaka", "JP", "storage", operator="Café Ōsaka DC")


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["sakai\n", "site:../members/steelco", "member:steelco", "site:sakai", "a" * 65, "x-1", "log"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(items=st.lists(st.tuples(st.sampled_from(["site", "member", "witness", "decide", "operator"]), _TEXT),
                      min_size=1, max_size=6))
def test_no_input_adds_an_entry_that_ledger_verify_rejects(tmp_path_factory: pytest.TempPathFactory,
                                                           items: list[tuple[str, str]]) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    with Workspace.init(tmp / "ws", "prop") as ws:
        registry.add_site(ws, "sakai", "JP", "storage")
        registry.add_member(ws, "steelco")
        for kind, text in items:
            try:
                if kind == "site":
                    registry.add_site(ws, text, "JP", "storage")
                elif kind == "member":
                    registry.add_member(ws, text)
                elif kind == "witness":
                    registry.add_witness(ws, text, "witness.example/w+01234567+AQ")
                elif kind == "operator":
                    registry.add_site(ws, "osaka", "JP", "storage", operator=text)
                else:
                    ws.decide(Request(text, "read", "d", "sakai"))
            except OnshoreError:
                pass
        report = ws.verify_ledger()
        assert report.size == ws.ledger.size()
        for s in registry.list_sites(ws):
            assert s.name.isascii() and "\n" not in s.name and "/" not in s.name


# ---- 5. site roots do not overlap; no plaintext in a site's folder ------------------------------

def test_site_roots_may_not_overlap_each_other_or_the_workspace(ws: Workspace, tmp_path: Path) -> None:
    ohio = Path(registry.get_site(ws, "ohio").root)
    for bad, why in ((ohio / "jp", "overlaps the storage folder of site 'ohio'"),
                     (ohio.parent, "overlaps the storage folder of site 'ohio'"),
                     (ws.root / "keys" / "x", "inside the workspace"),
                     (ws.root / "members" / "steelco", "inside the workspace"),
                     (ws.root, "overlaps the storage folder"),
                     (tmp_path / "elsewhere", None)):
        if why is None:
            continue
        with pytest.raises(ValidationError, match=why):
            registry.add_site(ws, "kobe", "JP", "storage", root=bad)
    with Workspace.init(tmp_path / "home" / "ws2", "w2") as ws2:  # its sites live outside it
        registry.add_site(ws2, "far", "JP", "storage", root=tmp_path / "far-store")
        with pytest.raises(ValidationError, match="contains the workspace"):
            registry.add_site(ws2, "near", "JP", "storage", root=tmp_path / "home")
    registry.add_site(ws, "kobe", "JP", "storage", root=tmp_path / "kobe-store")
    for bad in (tmp_path / "kobe-store" / "inner", tmp_path / "kobe-store"):
        with pytest.raises(ValidationError, match="overlaps the storage folder of site 'kobe'"):
            registry.add_site(ws, "nara", "JP", "storage", root=bad)
    link = tmp_path / "innocent"
    link.symlink_to(ohio)
    with pytest.raises(ValidationError, match="site 'ohio'"):
        registry.add_site(ws, "nara", "JP", "storage", root=link)
    assert {s.name for s in registry.list_sites(ws)} == {"sakai", "tokyo", "ohio", "kobe"}
    ws.verify_ledger()


def test_no_plaintext_is_written_into_a_site_folder(ws: Workspace, tmp_path: Path, policy_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _ingest(ws, tmp_path, policy_file)
    ohio = Path(registry.get_site(ws, "ohio").root)
    target = ohio / "frames.parquet"
    code = main(["-w", str(ws.root), "dataset", "read", "furnace", "--site", "sakai", "--out", str(target)])
    assert code == 1 and "inside the storage folder of site 'ohio'" in capsys.readouterr().err
    link = tmp_path / "looks-harmless"
    link.symlink_to(ohio)
    assert main(["-w", str(ws.root), "dataset", "read", "furnace", "--site", "sakai",
                 "--out", str(link / "f.parquet")]) == 1
    with pytest.raises(ValidationError, match="site 'sakai'"):
        datasets.export(ws, "furnace", "sakai", Path(registry.get_site(ws, "sakai").root) / "export")
    with pytest.raises(ValidationError, match="workspace's own folder"):
        datasets.export(ws, "furnace", "sakai", ws.root / "keys" / "export")
    assert not list(ohio.rglob("*")) and not (ws.root / "keys" / "export").exists()
    assert main(["-w", str(ws.root), "dataset", "read", "furnace", "--site", "sakai",
                 "--out", str(tmp_path / "ok.parquet")]) == 0


# ---- 6. provenance survives export; laundering into another member's dataset is refused -------

def _strip(table):  # type: ignore[no-untyped-def]
    return table.replace_schema_metadata(None)


def test_exported_data_carries_provenance_and_cannot_be_laundered(ws: Workspace, tmp_path: Path,
                                                                  policy_file: Path) -> None:
    import json

    import pyarrow.parquet as pq

    from onshore.telemetry.lerobot import read_lerobot_v3
    from onshore.telemetry.provenance import PARQUET_KEY, episode_fingerprints

    _ingest(ws, tmp_path, policy_file)
    out = datasets.export(ws, "furnace", "sakai", tmp_path / "export")
    info = json.loads((tmp_path / "export" / "meta" / "info.json").read_text())
    block = info["onshore"]
    exported = _last(ws, "data.export").entry.body
    assert (block["dataset"], block["owner"], block["decision_index"]) == ("furnace", "steelco",
                                                                           exported["decision_index"])
    assert block["policy_hash"] == ws.row("dataset", "furnace")["policy_hash"]
    data_file = next((tmp_path / "export" / "data").rglob("*.parquet"))
    assert json.loads(pq.read_schema(data_file).metadata[PARQUET_KEY]) == block
    assert out["frames"] == 200
    ingest = _last(ws, "data.ingest").entry.body
    assert len(ingest["fingerprints"]) == 4

    # 1. the exported folder, as is, ingested by another member with a looser policy
    loose = tmp_path / "loose.toml"
    loose.write_text('jurisdictions = ["JP", "US"]\npurposes = ["anything"]\nexpires = 2035-01-01\n')

    def launder(name: str, files: list[Path]) -> None:
        datasets.ingest(ws, name, "autoco", "sakai", loose, "furnace-line-3", files)

    with pytest.raises(PolicyDenied, match="dataset 'furnace' of member 'steelco'") as err:
        launder("mine", [tmp_path / "export"])
    assert err.value.rules == ["dataset/furnace/redistribution"]
    # 2. provenance stripped: the frames re-written as plain Parquet; the fingerprints still match
    table = _strip(read_lerobot_v3(tmp_path / "export").table)
    assert episode_fingerprints(table) == ingest["fingerprints"]
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain)
    with pytest.raises(PolicyDenied, match="episodes identical to episodes of dataset 'furnace'"):
        launder("mine", [plain])
    # 3. a read-out Parquet file carries the block too
    read_out = tmp_path / "read.parquet"
    pq.write_table(datasets.read(ws, "furnace", "sakai"), read_out)
    assert json.loads(pq.read_schema(read_out).metadata[PARQUET_KEY])["owner"] == "steelco"
    with pytest.raises(PolicyDenied, match="read.parquet says was exported from dataset 'furnace'"):
        launder("mine", [read_out])
    assert [d["name"] for d in datasets.list_datasets(ws)] == ["furnace"]
    # the owner may ingest its own data again
    datasets.ingest(ws, "furnace-again", "steelco", "sakai", policy_file, "furnace-line-3", [plain])
    ws.verify_ledger()


def test_redistribution_allowed_by_the_owners_policy(ws: Workspace, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    open_policy = tmp_path / "open.toml"
    open_policy.write_text('jurisdictions = ["JP"]\npurposes = ["x"]\nexpires = 2031-01-01\nredistribution = true\n')
    datasets.ingest(ws, "shared", "steelco", "sakai", open_policy, "furnace-line-3",
                    [write_frames(tmp_path / "s.parquet")])
    out = tmp_path / "r.parquet"
    pq.write_table(datasets.read(ws, "shared", "sakai"), out)
    datasets.ingest(ws, "derived", "autoco", "sakai", open_policy, "furnace-line-3", [out])
    assert {d["name"] for d in datasets.list_datasets(ws)} == {"shared", "derived"}
