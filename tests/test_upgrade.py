"""A workspace made by the code as it was before schema revisions (tests/fixtures, made by
make_old_workspace.py, lacking the tables pre-journal workspaces lacked) upgrades, verifies its
ledger, reads every dataset, serves its model and runs commands that need the new tables: with its
catalog and ledger in SQLite, and in PostgreSQL."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from _serving import EMBODIMENT, MODEL, TASK
from conftest import run_cli
from onshore.serve import Client, service, tokens
from onshore.workspace import Workspace, datasets
from onshore.workspace.config import WorkspaceConfig

FIXTURES = Path(__file__).parent / "fixtures"
STATE = np.array([600.0, 640.0, 4.0], dtype=np.float32)


def _put_sites_here(url: str, origin: str, root: Path) -> None:
    """Site storage folders are absolute paths in the catalog: point them where the copy now is, as
    they pointed into the workspace where it was made."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE sites SET root = :new || substr(root, :n)"),
                     {"new": str(root), "n": len(origin) + 1})
    engine.dispose()


def _sqlite_copy(tmp_path: Path) -> Path:
    root = tmp_path / "old"
    shutil.copytree(FIXTURES / "old-workspace", root)
    origin = (root / "ORIGIN").read_text().strip()
    _put_sites_here(f"sqlite:///{root / 'catalog.db'}", origin, root)
    return root


def _postgres_copy(tmp_path: Path, url: str) -> Path:
    if shutil.which("psql") is None:
        pytest.skip("psql is not on PATH: cannot load the PostgreSQL fixture")
    root = tmp_path / "old"
    shutil.copytree(FIXTURES / "old-workspace-pg", root)
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(root / "database.sql"), url],
                   check=True, capture_output=True)
    (root / "database.sql").unlink()
    _put_sites_here(url.replace("postgresql://", "postgresql+psycopg://", 1), (root / "ORIGIN").read_text().strip(),
                    root)
    old = WorkspaceConfig.read(root)
    WorkspaceConfig(old.name, old.jurisdiction, url, url).write(root)
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def old_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "sqlite":
        return _sqlite_copy(tmp_path)
    return _postgres_copy(tmp_path, request.getfixturevalue("fresh_postgres_db"))


def test_an_old_workspace_upgrades_and_everything_in_it_works(old_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "-w", str(old_root), "dataset", "list")
    assert code == 1 and "onshore upgrade" in err

    code, out, err = run_cli(capsys, "-w", str(old_root), "upgrade", "--backup", str(tmp_path / "before"))
    assert code == 0, err
    assert "no revision (made before revisions) -> catalog_0002" in out
    assert "no revision (made before revisions) -> ledger_0004" in out
    manifest = json.loads((tmp_path / "before" / "backup.json").read_text())
    assert manifest["revisions"] == {"catalog": None, "ledger": None}  # the backup is of the old workspace

    code, out, err = run_cli(capsys, "-w", str(old_root), "ledger", "verify")
    assert code == 0, err
    ws = Workspace.open(old_root)
    try:
        report = ws.verify_ledger()
        assert report.size == ws.ledger.size() == manifest["ledger_size"]
        assert ws.ledger.subject_head("dataset:furnace") is not None  # ledger_heads was filled from the entries
        for d in datasets.list_datasets(ws):  # every dataset reads, at every site that holds it
            for site in d["sites"]:
                assert datasets.read(ws, d["name"], site).num_rows == d["frames"] > 0
        # ledger_attempts (absent before): a copy runs through the attempt journal
        datasets.copy(ws, "furnace", "tokyo")
        assert datasets.read(ws, "furnace", "tokyo").num_rows == 120
        # serve_tokens (absent before) and the model, served where it sits
        with service.start(ws, MODEL, "tokyo", port=0) as running:
            tok = tokens.issue(ws, "tokyo", "line-1")
            running.server.tokens.refresh()
            with Client(running.url, tok, EMBODIMENT) as client:
                client.reset(TASK)
                action = client.act(STATE)
        assert np.asarray(action).shape == (2,) and np.isfinite(action).all()
    finally:
        ws.close()
    code, out, err = run_cli(capsys, "-w", str(old_root), "doctor")
    assert code == 0, out + err
