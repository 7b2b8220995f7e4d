"""Site key custody in a PKCS#11 token (SoftHSM2): keys that a copy of the workspace cannot take.

Each test initialises its own SoftHSM2 token in a temporary folder (SOFTHSM2_CONF points at a
config there). Skipped when softhsm2 or python-pkcs11 is absent (``make test`` installs softhsm2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import build_consortium, write_frames
from onshore.catalog import schema as T
from onshore.errors import OnshoreError, PolicyDenied
from onshore.keys import pkcs11store
from onshore.keys.pkcs11store import CUSTODY_FILE, CustodyConfig, Pkcs11KeyStore
from onshore.workspace import custody, datasets, doctor
from onshore.workspace.workspace import Workspace

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
pkcs11 = pytest.importorskip("pkcs11")
pytestmark = pytest.mark.skipif(not (Path(MODULE).is_file() and shutil.which("softhsm2-util")),
                                reason="softhsm2 not installed (apt-get install softhsm2; make test does)")
PIN = "4321"


def init_token(folder: Path, label: str) -> None:
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "1234",
                    "--pin", PIN], check=True, capture_output=True, env=os.environ.copy())


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A SoftHSM2 token store of this test's own, with tokens for sakai and tokyo."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv("ONSHORE_TEST_PIN", PIN)
    for label in ("sakai", "tokyo"):
        init_token(tokens, label)
    pkcs11store.reset()  # the module reads its config and slots when initialised
    yield tokens
    pkcs11store.reset()


def _config(label: str) -> CustodyConfig:
    return CustodyConfig(MODULE, label, pin_env="ONSHORE_TEST_PIN")


def _ingest(ws: Workspace, tmp: Path, policy: Path, name: str = "furnace") -> None:
    datasets.ingest(ws, name, "steelco", "sakai", policy, "furnace-line-3", [write_frames(tmp / f"{name}.parquet")])


def _pkcs11_ws(tmp_path: Path) -> Workspace:
    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    for site in ("sakai", "tokyo"):
        custody.migrate(ws, site, _config(site))
    return ws


def test_ingest_copy_read_with_keys_only_in_the_token(hsm: Path, tmp_path: Path, policy_file: Path) -> None:
    ws = _pkcs11_ws(tmp_path)
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


def test_copy_of_workspace_before_withdrawal_no_longer_opens(hsm: Path, tmp_path: Path, policy_file: Path) -> None:
    ws = _pkcs11_ws(tmp_path)
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


def test_wrong_pin_and_missing_module_are_clear_errors(hsm: Path, tmp_path: Path, policy_file: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    size = ws.ledger.size()
    with pytest.raises(OnshoreError, match="not found"):
        custody.migrate(ws, "sakai", CustodyConfig(str(tmp_path / "nope.so"), "sakai", pin_env="ONSHORE_TEST_PIN"))
    monkeypatch.setenv("ONSHORE_TEST_PIN", "0000")
    with pytest.raises(OnshoreError, match="PIN is incorrect"):
        custody.migrate(ws, "sakai", _config("sakai"))
    monkeypatch.delenv("ONSHORE_TEST_PIN")
    with pytest.raises(OnshoreError, match="ONSHORE_TEST_PIN"):
        custody.migrate(ws, "sakai", _config("sakai"))
    with pytest.raises(OnshoreError, match="no token labelled"):
        custody.migrate(ws, "sakai", CustodyConfig(MODULE, "nobody", pin_file=str(tmp_path / "pin")))
    assert ws.ledger.size() == size and not (ws.keys_dir("site:sakai") / CUSTODY_FILE).exists()
    assert (ws.keys_dir("site:sakai") / "kek.bin").exists()
    monkeypatch.setenv("ONSHORE_TEST_PIN", PIN)
    custody.migrate(ws, "sakai", _config("sakai"))
    ws.close()
    pkcs11store.reset()  # a new process: a site configured in a token, opened with a wrong PIN
    monkeypatch.setenv("ONSHORE_TEST_PIN", "9999")
    ws = Workspace.open(tmp_path / "ws")
    _ingest_err = None
    try:
        _ingest(ws, tmp_path, policy_file)
    except OnshoreError as e:
        _ingest_err = str(e)
    assert _ingest_err is not None and "PIN is incorrect" in _ingest_err
    assert datasets.list_datasets(ws) == []
    ws.close()


def test_migration_from_file_store_loses_nothing(hsm: Path, tmp_path: Path, policy_file: Path) -> None:
    ws = build_consortium(Workspace.init(tmp_path / "ws", "hsm-consortium"), tmp_path)
    _ingest(ws, tmp_path, policy_file)
    _ingest(ws, tmp_path, policy_file, "furnace2")
    datasets.copy(ws, "furnace", "tokyo")
    before = {(d, s): datasets.read(ws, d, s) for d, s in (("furnace", "sakai"), ("furnace2", "sakai"),
                                                           ("furnace", "tokyo"))}
    out = custody.migrate(ws, "sakai", _config("sakai"))
    assert out["datasets"] == ["furnace", "furnace2"]
    entry = list(ws.ledger.entries(kinds=("site.custody",)))[-1].entry.body
    assert entry["site"] == "sakai" and entry["datasets"] == ["furnace", "furnace2"] and entry["token_serial"]
    assert not list((ws.keys_dir("site:sakai") / "datasets").glob("*.key"))
    for (d, s), table in before.items():
        assert datasets.read(ws, d, s).equals(table)
    with pytest.raises(OnshoreError, match="already has its custody"):
        custody.migrate(ws, "sakai", _config("sakai"))
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
