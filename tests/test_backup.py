"""`onshore backup` and `onshore restore`: catalog, ledger, key custody and shards, on SQLite and PostgreSQL,
taken while other commands write, refused when damaged; every restore ends with `doctor` clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from _serving import MODEL, furnace_workspace
from conftest import POLICY_JP, build_consortium, run_cli, write_frames
from onshore.errors import IntegrityError, OnshoreError, ValidationError
from onshore.workspace import Workspace, datasets, registry
from onshore.workspace.backup import backup, restore


def _new_db(server_url: str) -> str:
    import psycopg

    name = "r_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_backup_restores_to_a_workspace_that_doctor_finds_clean(backend: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 request: pytest.FixtureRequest) -> None:
    db = request.getfixturevalue("fresh_postgres_db") if backend == "postgresql" else None
    ws = furnace_workspace(tmp_path / "made", db_url=db)  # a dataset, and a tiny model at sakai and tokyo
    root, size, tree_root = ws.root, ws.ledger.size(), ws.ledger.root()
    ws.close()
    code, out, err = run_cli(capsys, "-w", str(root), "backup", str(tmp_path / "bk"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "bk" / "backup.json").read_text())
    assert manifest["ledger_size"] == size and manifest["backend"] == backend
    assert any(k.endswith("sites/sakai/keys/datasets/furnace.key") for k in manifest["files"])
    assert any(k.endswith(".parquet") for k in manifest["files"])
    assert (tmp_path / "bk").stat().st_mode & 0o777 == 0o700  # it holds every key
    assert (tmp_path / "bk" / "workspace" / "sites" / "sakai" / "keys").stat().st_mode & 0o777 == 0o700

    args = ["-w", str(tmp_path / "restored"), "restore", str(tmp_path / "bk")]
    if db is not None:
        target = _new_db(request.getfixturevalue("postgres_url"))
        args += ["--catalog", target, "--ledger", target]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    code, out, err = run_cli(capsys, "-w", str(tmp_path / "restored"), "doctor")
    assert code == 0 and "doctor: nothing to do" in out, out + err

    again = Workspace.open(tmp_path / "restored")
    try:
        assert again.ledger.size() == size and again.ledger.root() == tree_root
        assert again.verify_ledger().size == size
        assert datasets.read(again, "furnace", "sakai").num_rows == 120
        for site in datasets.list_datasets(again)[0]["sites"]:  # storage is the restored copy's own
            row = again.row("site", site)
            assert Path(row["root"]).is_relative_to(tmp_path / "restored")
        # the restored workspace is a workspace of its own: writing to it leaves the original alone
        datasets.copy(again, "furnace", "tokyo")
    finally:
        again.close()
    with Workspace.open(root) as original:
        assert original.ledger.size() == size
    code, out, _ = run_cli(capsys, "-w", str(tmp_path / "restored"), "model", "show", MODEL)
    assert code == 0


WRITER = """
import sys, time
from pathlib import Path
from onshore.workspace import Workspace, datasets, registry
root, frames, policy, stop = map(Path, sys.argv[1:5])
with Workspace.open(root) as ws:
    i = 0
    while not stop.exists():
        datasets.ingest(ws, f"line-{i}", "steelco", "sakai", policy, "furnace-line-3", [frames])
        datasets.copy(ws, f"line-{i}", "tokyo")
        i += 1
print(i)
"""


def test_a_backup_taken_while_commands_write_restores_consistent(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.init(tmp_path / "ws", "busy")
    build_consortium(ws, tmp_path)
    ws.close()
    frames = write_frames(tmp_path / "f.parquet", episodes=2, frames=30)
    (tmp_path / "p.toml").write_text(POLICY_JP)
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ws.root), str(frames), str(tmp_path / "p.toml"),
                               str(stop)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (ws.root / "sites" / "sakai" / "data" / "datasets").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        reports = []
        for i in range(8):  # each backup lands at a different point of the writer's work
            reports.append(backup(ws.root, tmp_path / f"bk{i}"))
            time.sleep(0.05)
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert int(out.strip()) >= 2
    assert reports[-1].ledger_size > reports[0].ledger_size  # the writer went on between backups
    for i, report in enumerate(reports):
        target = tmp_path / f"restored{i}"
        restore(report.out, target)
        # what a command was doing between two commits is there as a crash would leave it: repair closes it
        code, out, err = run_cli(capsys, "-w", str(target), "doctor", "--repair")
        assert code == 0, out + err
        code, out, err = run_cli(capsys, "-w", str(target), "doctor")
        assert code == 0 and "doctor: nothing to do" in out, out + err
        with Workspace.open(target) as again:
            # the backed-up ledger is there entire (repair may have appended its data.abandoned entries)
            assert again.verify_ledger().size >= report.ledger_size
            assert again.ledger.root(report.ledger_size).hex() == report.ledger_root
            for d in datasets.list_datasets(again):
                for site in d["sites"]:
                    assert datasets.read(again, d["name"], site).num_rows == 60


@pytest.fixture
def small_backup(tmp_path: Path) -> Path:
    ws = Workspace.init(tmp_path / "ws", "small")
    build_consortium(ws, tmp_path)
    (tmp_path / "p.toml").write_text(POLICY_JP)
    datasets.ingest(ws, "furnace", "steelco", "sakai", tmp_path / "p.toml", "furnace-line-3",
                    [write_frames(tmp_path / "f.parquet")])
    ws.close()
    backup(ws.root, tmp_path / "bk")
    return tmp_path / "bk"


def test_a_damaged_or_altered_backup_is_refused_before_anything_is_made(small_backup: Path, tmp_path: Path) -> None:
    manifest = json.loads((small_backup / "backup.json").read_text())
    shard = next(small_backup / k for k in manifest["files"] if k.endswith(".parquet"))
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"\.parquet: its SHA-256 is not the one backup.json records"):
        restore(small_backup, tmp_path / "r1")
    assert not (tmp_path / "r1").exists()

    manifest["files"]["workspace/../../escape"] = "0" * 64
    (small_backup / "backup.json").write_text(json.dumps(manifest))
    with pytest.raises(ValidationError, match="not a path inside the backup"):
        restore(small_backup, tmp_path / "r2")
    (small_backup / "backup.json").write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        restore(small_backup, tmp_path / "r3")
    with pytest.raises(ValidationError, match="not an Onshore backup"):
        restore(tmp_path / "ws", tmp_path / "r4")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


def test_backup_and_restore_refuse_folders_they_would_clobber(small_backup: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValidationError, match="not an empty folder"):
        backup(tmp_path / "ws", small_backup)
    with pytest.raises(ValidationError, match="inside the workspace"):
        backup(tmp_path / "ws", tmp_path / "ws" / "sites" / "bk")
    with Workspace.open(tmp_path / "ws") as ws:  # a site with its storage outside the workspace
        registry.add_site(ws, "osaka", "JP", "storage", root=tmp_path / "osaka-disk")
    with pytest.raises(ValidationError, match="inside the storage folder of site 'osaka'"):
        backup(tmp_path / "ws", tmp_path / "osaka-disk" / "bk")
    assert not (tmp_path / "osaka-disk" / "bk").exists()
    code, _, err = run_cli(capsys, "-w", str(tmp_path / "ws"), "restore", str(small_backup))
    assert code == 1 and "not an empty folder" in err
    with pytest.raises(ValidationError, match="catalog is a SQLite file"):
        restore(small_backup, tmp_path / "r", catalog="postgresql://x@127.0.0.1/y")
    assert not (tmp_path / "r").exists()


def test_a_postgresql_backup_without_pg_dump_is_refused(tmp_path: Path, fresh_postgres_db: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.init(tmp_path / "ws", "pg", catalog_url=fresh_postgres_db, ledger_url=fresh_postgres_db)
    ws.close()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(OnshoreError, match="'pg_dump' is not on PATH"):
        backup(ws.root, tmp_path / "bk")
    assert not (tmp_path / "bk").exists()


def test_a_withdrawal_reaches_backups_through_reshred(small_backup: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ws"
    # restored as it is, a backup taken before a withdrawal opens the dataset again: that is the risk
    restore(small_backup, tmp_path / "unshredded")
    with Workspace.open(root) as ws:
        datasets.withdraw(ws, "furnace", "steelco")
    with Workspace.open(tmp_path / "unshredded") as stale:
        assert datasets.read(stale, "furnace", "sakai").num_rows == 200
    code, out, err = run_cli(capsys, "-w", str(root), "reshred", str(small_backup))
    assert code == 0 and "destroyed 1 key(s) of furnace" in out, err
    assert not list(small_backup.glob("workspace/sites/*/keys/datasets/furnace.key"))
    code, out, _ = run_cli(capsys, "-w", str(root), "reshred", str(small_backup))
    assert "nothing withdrawn since it was taken" in out  # again: nothing left to destroy
    with pytest.raises(ValidationError, match="not a backup of this workspace"):
        other = Workspace.init(tmp_path / "other", "other")
        try:
            from onshore.workspace.backup import reshred

            reshred(small_backup, other)
        finally:
            other.close()

    code, out, err = run_cli(capsys, "-w", str(tmp_path / "restored"), "restore", str(small_backup))
    assert code == 0, err
    assert "onshore dataset withdraw furnace --member steelco" in out
    with Workspace.open(tmp_path / "restored") as again, pytest.raises(OnshoreError, match="keys were destroyed"):
        datasets.read(again, "furnace", "sakai")  # its key is gone: the shards are noise
    code, out, err = run_cli(capsys, "-w", str(tmp_path / "restored"), "dataset", "withdraw", "furnace",
                             "--member", "steelco")
    assert code == 0, err
    code, out, err = run_cli(capsys, "-w", str(tmp_path / "restored"), "doctor")
    assert code == 0 and "doctor: nothing to do" in out, out + err


def test_storage_kept_outside_the_workspace_comes_back_inside_the_restored_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.init(tmp_path / "ws", "outside")
    build_consortium(ws, tmp_path)
    registry.add_site(ws, "osaka", "JP", "storage", root=tmp_path / "osaka-disk")
    (tmp_path / "p.toml").write_text(POLICY_JP)
    datasets.ingest(ws, "furnace", "steelco", "osaka", tmp_path / "p.toml", "furnace-line-3",
                    [write_frames(tmp_path / "f.parquet")])
    ws.close()
    report = backup(ws.root, tmp_path / "bk")
    manifest = json.loads((report.out / "backup.json").read_text())
    assert any(k.startswith("site-roots/osaka/datasets/furnace/") for k in manifest["files"])
    restored = restore(report.out, tmp_path / "restored")
    assert restored.site_roots["osaka"] == str(tmp_path / "restored" / "sites" / "osaka" / "data")
    code, out, err = run_cli(capsys, "-w", str(tmp_path / "restored"), "doctor")
    assert code == 0 and "doctor: nothing to do" in out, out + err
    with Workspace.open(tmp_path / "restored") as again:
        assert datasets.read(again, "furnace", "osaka").num_rows == 200
    shutil.rmtree(tmp_path / "osaka-disk")  # the restored workspace does not lean on the original's disk
    with Workspace.open(tmp_path / "restored") as again:
        assert datasets.read(again, "furnace", "osaka").num_rows == 200
