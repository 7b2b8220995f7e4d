"""The same catalog and ledger code on SQLite and on PostgreSQL (skipped, with the reason, if no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import POLICY_JP, build_consortium, write_frames
from onshore.errors import PolicyDenied
from onshore.workspace import Workspace, datasets


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_ws(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        ws = Workspace.init(tmp_path / "ws", "backend-test")
    else:
        catalog = request.getfixturevalue("fresh_postgres_db")
        ledger = request.getfixturevalue("fresh_postgres_db")
        ws = Workspace.init(tmp_path / "ws", "backend-test", catalog_url=catalog, ledger_url=ledger)
    build_consortium(ws, tmp_path)
    yield ws
    ws.close()


def test_catalog_flow_on_each_backend(backend_ws: Workspace, tmp_path: Path) -> None:
    ws = backend_ws
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY_JP)
    datasets.ingest(ws, "furnace", "steelco", "sakai", policy, "furnace-line-3", [write_frames(tmp_path / "f.parquet")])
    datasets.copy(ws, "furnace", "tokyo")
    with pytest.raises(PolicyDenied):
        datasets.copy(ws, "furnace", "ohio")
    assert datasets.read(ws, "furnace", "tokyo").num_rows == 200
    assert [d["sites"] for d in datasets.list_datasets(ws)] == [["sakai", "tokyo"]]
    datasets.withdraw(ws, "furnace", "steelco")
    with pytest.raises(PolicyDenied):
        datasets.read(ws, "furnace", "sakai")
    report = ws.verify_ledger()
    assert report.size == ws.ledger.size()
    # reopening from onshore.toml reaches the same databases
    again = Workspace.open(ws.root)
    assert again.ledger.root() == ws.ledger.root()
    again.close()


def test_a_used_database_is_refused_for_a_new_workspace(backend_ws: Workspace, tmp_path: Path) -> None:
    if backend_ws.config.catalog_url == "":
        pytest.skip("SQLite catalogs live inside their workspace folder")
    from onshore.errors import ValidationError

    with pytest.raises(ValidationError, match="already belongs to a workspace"):
        Workspace.init(tmp_path / "other", "x", catalog_url=backend_ws.config.catalog_url)
