"""Schema revisions: the scripts build exactly the tables the code declares, on SQLite and PostgreSQL; a
workspace not at this code's head is refused at open (older: 'onshore upgrade'; newer: upgrade Onshore)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from conftest import run_cli
from onshore.catalog import migrate
from onshore.catalog.schema import metadata as catalog_metadata
from onshore.ledger.log import LEDGER_SCHEMA, ledger_metadata
from onshore.workspace import Workspace

FIXTURE = Path(__file__).parent / "fixtures" / "old-workspace"
LINES = [(migrate.CATALOG, catalog_metadata), (LEDGER_SCHEMA, ledger_metadata)]


@pytest.mark.parametrize("line", [migrate.CATALOG, LEDGER_SCHEMA], ids=["catalog", "ledger"])
def test_each_line_lists_exactly_its_scripts_in_order(line: migrate.SchemaLine) -> None:
    script = ScriptDirectory(str(line.scripts), version_locations=[str(line.scripts / "versions")])
    walked = [s.revision for s in script.walk_revisions()]
    assert list(reversed(walked)) == list(line.revisions)
    assert script.get_current_head() == line.head


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("fresh_postgres_db").replace("postgresql://", "postgresql+psycopg://", 1)


def test_revisions_from_nothing_build_the_tables_the_code_declares(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        for line, tables in LINES:  # both lines in one database, as a PostgreSQL deployment may have them
            with engine.begin() as conn:
                command.upgrade(migrate.alembic_config(conn, line), "head")
                assert migrate.stored_revision(conn, line) == line.head
            with engine.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={"compare_type": True})
                diffs = [d for d in compare_metadata(ctx, tables)
                         if not (d[0] == "remove_table" and d[1].name not in tables.tables)]
            assert diffs == [], (line.name, diffs)
    finally:
        engine.dispose()


def test_a_new_workspace_is_made_at_the_head_revisions(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "fresh")
    try:
        with ws.catalog.connect() as conn:
            assert migrate.stored_revision(conn, migrate.CATALOG) == migrate.CATALOG.head
        with ws.ledger.engine.connect() as conn:
            assert migrate.stored_revision(conn, LEDGER_SCHEMA) == LEDGER_SCHEMA.head
    finally:
        ws.close()
    Workspace.open(tmp_path / "ws").close()


def _tables(db: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("command_line", [["site", "list"], ["dataset", "list"], ["model", "list"],
                                          ["ledger", "verify"], ["doctor"], ["dataset", "show", "furnace"]])
def test_every_command_refuses_an_unmigrated_workspace_naming_upgrade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command_line: list[str]) -> None:
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    before = (_tables(root / "catalog.db"), _tables(root / "ledger.db"))
    code, _, err = run_cli(capsys, "-w", str(root), *command_line)
    assert code == 1
    assert "made before schema revisions existed" in err and "onshore upgrade" in err
    assert "Traceback" not in err
    assert (_tables(root / "catalog.db"), _tables(root / "ledger.db")) == before  # nothing was changed
    assert "ledger_attempts" not in before[1]


def test_a_workspace_upgraded_by_newer_code_is_refused_and_left_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.init(tmp_path / "ws", "from-the-future")
    with ws.ledger.engine.begin() as conn:
        conn.execute(text(f"UPDATE {LEDGER_SCHEMA.version_table} SET version_num = 'ledger_9999'"))
    ws.close()
    code, _, err = run_cli(capsys, "-w", str(tmp_path / "ws"), "site", "list")
    assert code == 1 and "'ledger_9999', which this version of Onshore does not know" in err
    assert "upgraded by a newer Onshore" in err
    code, _, err = run_cli(capsys, "-w", str(tmp_path / "ws"), "upgrade")
    assert code == 1 and "newer Onshore" in err
    assert not (tmp_path / "ws" / "backups").exists()  # refused before the backup
    engine = create_engine(f"sqlite:///{tmp_path / 'ws' / 'ledger.db'}")
    with engine.connect() as conn:
        assert migrate.stored_revision(conn, LEDGER_SCHEMA) == "ledger_9999"
    engine.dispose()


def test_an_older_revision_is_named_and_upgrade_moves_it_to_head(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.init(tmp_path / "ws", "one-behind")
    with ws.catalog.begin() as conn:
        conn.execute(text(f"UPDATE {migrate.CATALOG.version_table} SET version_num = 'catalog_0001'"))
    ws.close()
    code, _, err = run_cli(capsys, "-w", str(tmp_path / "ws"), "member", "list")
    assert code == 1 and "is at schema revision 'catalog_0001'" in err and "onshore upgrade" in err
    code, out, _ = run_cli(capsys, "-w", str(tmp_path / "ws"), "upgrade", "--backup", str(tmp_path / "bk"))
    assert code == 0, out
    assert "the catalog: catalog_0001 -> catalog_0002" in out and "the ledger: at ledger_0004, nothing to do" in out
    assert (tmp_path / "bk" / "backup.json").is_file()
    code, out, _ = run_cli(capsys, "-w", str(tmp_path / "ws"), "upgrade")
    assert code == 0 and "upgrade: nothing to do" in out
    assert not (tmp_path / "ws" / "backups").exists()  # nothing to do: no backup taken
    assert run_cli(capsys, "-w", str(tmp_path / "ws"), "member", "list")[0] == 0
