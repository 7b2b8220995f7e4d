"""Site key custody in a PKCS#11 token (SoftHSM2): keys that a copy of the workspace cannot take.

Each test initialises its own SoftHSM2 token in a temporary folder (SOFTHSM2_CONF points at a
config there). Skipped when softhsm2 or python-pkcs11 is absent (``make test`` installs softhsm2).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import build_consortium, write_frames
from onshore.catalog import schema as T
from onshore.errors import OnshoreError, PolicyDenied
from onshore.keys import pkcs11store, softhsm
from onshore.keys.pkcs11store import CUSTODY_FILE, CustodyConfig, Pkcs11KeyStore
from onshore.workspace import custody, datasets, doctor
from onshore.workspace.workspace import Workspace

pkcs11 = pytest.importorskip("pkcs11")
pytestmark = pytest.mark.skipif(not softhsm.available(),
                                reason="softhsm2 not installed (apt-get install softhsm2; make test does)")
MODULE = softhsm.MODULE
Tokens = dict[str, CustodyConfig]


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tokens]:
    """A SoftHSM2 token store of this test's own (SOFTHSM2_CONF in tmp), tokens for sakai and tokyo."""
    monkeypatch.setenv("SOFTHSM2_CONF", "")  # restored after the test; token_store sets it
    softhsm.token_store(tmp_path / "hsm")
    yield {label: softhsm.init_token(tmp_path / "hsm", label) for label in ("sakai", "tokyo")}
    pkcs11store.reset()


def _ingest(ws: Workspace, tmp: Path, policy: Path, name: str = "furnace") -> None:
    datasets.ingest(ws, name, "steelco", "sakai", policy, "furnace-line-3", [write_frames(tmp / f"{name}.parquet")])


def _pkcs11_ws(tmp_path: Path, hsm: Tokens) -> Workspace:
    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    for site in ("sakai", "tokyo"):
        custody.migrate(ws, site, hsm[site])
    return ws


def test_ingest_copy_read_with_keys_only_in_the_token(hsm: Tokens, tmp_path: Path, policy_file: Path) -> None:
    ws = _pkcs11_ws(tmp_path, hsm)
    _ingest(ws, tmp_path, policy_file)
    datasets.copy(ws, "furnace", "tokyo")
    assert datasets.read(ws, "furnace", "tokyo").num_rows == 200
    assert datasets.read(ws, "furnace", "sakai").num_rows == 200
    for site in ("sakai", "tokyo"):
        store = ws.keystore(f"site:{site}")
        assert isinstance(store, Pkcs11KeyStore)
        assert not list((store.directory / "datasets").glob("*.key")) and not (store.directory / "kek.bin").exists()
        key = store.handle("dataset", "furnace")
        assert key is not None
        # as the token itself reports them
        assert key[pkcs11.Attribute.SENSITIVE] is True and key[pkcs11.Attribute.EXTRACTABLE] is False
        assert key[pkcs11.Attribute.NEVER_EXTRACTABLE] is True and key[pkcs11.Attribute.TOKEN] is True
        with pytest.raises(pkcs11.PKCS11Error):
            key[pkcs11.Attribute.VALUE]
        with pytest.raises(OnshoreError, match="never leaves"):
            store.key("dataset", "furnace")
    assert doctor.run(ws).ok
    ws.close()


def test_copy_of_workspace_before_withdrawal_no_longer_opens(hsm: Tokens, tmp_path: Path, policy_file: Path) -> None:
    ws = _pkcs11_ws(tmp_path, hsm)
    _ingest(ws, tmp_path, policy_file)
    ws.close()
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "ws", backup, symlinks=True)
    ws = Workspace.open(tmp_path / "ws")
    datasets.withdraw(ws, "furnace", "steelco")
    shred = [e.entry.body for e in ws.ledger.entries(kinds=("key.shred",))]
    assert shred[0]["custody"] == "pkcs11" and shred[0]["object_label"] == "onshore:dataset:furnace"
    assert shred[0]["token_serial"] and isinstance(shred[0]["object_handle"], int)
    assert ws.keystore("site:sakai").handle("dataset", "furnace") is None
    assert doctor.run(ws).ok
    ws.close()
    # the backup: its catalog still says active and holds the wrap, its ledger has no withdrawal
    old = Workspace.open(backup)
    with old.catalog.connect() as conn:
        assert conn.execute(select(T.key_wraps.c.dataset)).all() == [("furnace",)]
    with pytest.raises(OnshoreError, match="no key"):
        datasets.read(old, "furnace", "sakai")
    old.close()


def test_wrong_pin_and_missing_module_are_clear_errors(hsm: Tokens, tmp_path: Path,
                                                      policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    size = ws.ledger.size()
    pin = Path(hsm["sakai"].pin_file or "").read_text().strip()
    by_env = CustodyConfig(MODULE, "sakai", pin_env="ONSHORE_TEST_PIN")
    with pytest.raises(OnshoreError, match="not found"):
        custody.migrate(ws, "sakai", CustodyConfig(str(tmp_path / "nope.so"), "sakai", pin_env="ONSHORE_TEST_PIN"))
    monkeypatch.setenv("ONSHORE_TEST_PIN", "0000")
    with pytest.raises(OnshoreError, match="PIN is incorrect"):
        custody.migrate(ws, "sakai", by_env)
    monkeypatch.delenv("ONSHORE_TEST_PIN")
    with pytest.raises(OnshoreError, match="ONSHORE_TEST_PIN"):
        custody.migrate(ws, "sakai", by_env)
    with pytest.raises(OnshoreError, match="no token labelled"):
        custody.migrate(ws, "sakai", CustodyConfig(MODULE, "nobody", pin_file=hsm["sakai"].pin_file))
    # nothing changed: no ledger entry, no custody file, the file keys still there
    assert ws.ledger.size() == size and not (ws.keys_dir("site:sakai") / CUSTODY_FILE).exists()
    assert (ws.keys_dir("site:sakai") / "kek.bin").exists()
    monkeypatch.setenv("ONSHORE_TEST_PIN", pin)
    custody.migrate(ws, "sakai", by_env)
    ws.close()
    pkcs11store.reset()  # a new process: the site's custody.toml names the token, the PIN is wrong
    monkeypatch.setenv("ONSHORE_TEST_PIN", "9999")
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(OnshoreError, match="PIN is incorrect"):
        _ingest(ws, tmp_path, policy_file)
    assert datasets.list_datasets(ws) == []
    ws.close()


def test_migration_from_file_store_loses_nothing(hsm: Tokens, tmp_path: Path, policy_file: Path) -> None:
    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    _ingest(ws, tmp_path, policy_file)
    _ingest(ws, tmp_path, policy_file, "furnace2")
    datasets.copy(ws, "furnace", "tokyo")
    before = {(d, s): datasets.read(ws, d, s) for d, s in (("furnace", "sakai"), ("furnace2", "sakai"),
                                                           ("furnace", "tokyo"))}
    out = custody.migrate(ws, "sakai", hsm["sakai"])
    assert out["datasets"] == ["furnace", "furnace2"]
    entry = list(ws.ledger.entries(kinds=("site.custody",)))[-1].entry.body
    assert entry["site"] == "sakai" and entry["datasets"] == ["furnace", "furnace2"] and entry["token_serial"]
    assert not list((ws.keys_dir("site:sakai") / "datasets").glob("*.key"))
    for (d, s), table in before.items():
        assert datasets.read(ws, d, s).equals(table)
    with pytest.raises(OnshoreError, match="already has its custody"):
        custody.migrate(ws, "sakai", hsm["sakai"])
    assert doctor.run(ws).ok
    # a token key destroyed behind Onshore's back is a doctor finding
    ws.keystore("site:sakai").destroy_key("dataset", "furnace2")
    found = [f for f in doctor.run(ws).findings if f.check == "token-keys"]
    assert found and "furnace2" in found[0].subject
    with pytest.raises(OnshoreError, match="no key"):
        datasets.read(ws, "furnace2", "sakai")
    with pytest.raises(PolicyDenied):
        datasets.read(ws, "furnace", "sakai", purpose="advertising")
    ws.close()


def test_train_copy_and_serve_load_with_pkcs11_sites(hsm: Tokens, tmp_path: Path, policy_file: Path) -> None:
    from onshore.model.text import HASHED
    from onshore.serve.loading import load_served_model
    from onshore.train.loop import TrainConfig, TrainRequest, train
    from onshore.workspace import models

    ws = _pkcs11_ws(tmp_path, hsm)
    datasets.ingest(ws, "furnace", "steelco", "sakai", policy_file, "furnace-line-3",
                    [write_frames(tmp_path / "f.parquet", episodes=3, frames=40)])
    config = TrainConfig(steps=2, batch_size=8, checkpoint_every=2, log_every=1, precision="fp32",
                         text_encoder=HASHED, warmup=1)
    train(ws, TrainRequest("furnace-tiny", "sakai", "fine-tuning", ("furnace",), size="tiny", train=config))
    models.copy_model(ws, "furnace-tiny", "tokyo")
    for site in ("sakai", "tokyo"):
        key = ws.keystore(f"site:{site}").handle("model", "furnace-tiny")
        assert key is not None and key[pkcs11.Attribute.EXTRACTABLE] is False
        assert not list((ws.keys_dir(f"site:{site}") / "models").glob("*.key"))
    served = load_served_model(ws, "furnace-tiny", "tokyo")
    assert served.digest
    assert doctor.run(ws).ok
    ws.close()


def test_cli_migrate_takes_the_pin_from_the_environment_only(hsm: Tokens, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_cli

    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    ws.close()
    monkeypatch.setenv("ONSHORE_WORKSPACE", str(tmp_path / "ws"))
    base = ("site", "custody", "migrate", "tokyo", "--to", "pkcs11", "--module", MODULE, "--token-label", "tokyo")
    code, _, err = run_cli(capsys, *base)
    assert code != 0 and "--pin-env" in err
    monkeypatch.setenv("TOKYO_PIN", Path(hsm["tokyo"].pin_file or "").read_text().strip())
    code, out, err = run_cli(capsys, *base, "--pin-env", "TOKYO_PIN")
    assert code == 0, err
    assert "token tokyo" in out
    conf = (tmp_path / "ws" / "sites" / "tokyo" / "keys" / CUSTODY_FILE).read_text()
    assert 'pin_env = "TOKYO_PIN"' in conf and os.environ["TOKYO_PIN"] not in conf
