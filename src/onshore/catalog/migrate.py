"""Schema revisions of a store (the catalog's, the ledger's): check them cheaply, apply them with Alembic.

Each store keeps its own line of Alembic revisions in a folder inside the package (its
``revisions/versions``) and its own version table, so that a catalog and a ledger may share one
PostgreSQL database. Alembic runs programmatically on a connection we hand it (``revisions/env.py``
reads it from the config's attributes): no ``alembic.ini`` is needed at run time.

:func:`check` is what every open does: one query on the version table, no Alembic import. A store
whose revision is older than this code's head, or that has no version table (made before
revisions existed), is refused with a message naming ``onshore upgrade``; one whose revision this
code does not know was made by newer code, and is refused with a message saying to upgrade Onshore.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from onshore.catalog.db import write_transaction
from onshore.errors import OnshoreError
from onshore.i18n import N_, Message


class SchemaError(OnshoreError):
    """A store's schema revision is not the one this code works with (older: run ``onshore upgrade``;
    newer: upgrade Onshore)."""


@dataclass(frozen=True)
class SchemaLine:
    """One store's line of revisions.

    ``revisions`` lists every revision id this code knows, oldest first; the last is the head a
    store must be at to be used. ``marker`` is a table every store of this kind has had since the
    first release, by which a store made before revisions existed is recognised (it is then at
    ``revisions[0]``, the baseline).
    """

    name: str             # "catalog", "ledger"
    version_table: str
    scripts: Path         # the folder holding env.py and versions/
    revisions: tuple[str, ...]
    marker: str

    @property
    def what(self) -> str:
        """How messages (and the write lock) name the store: "the catalog"."""
        return f"the {self.name}"

    @property
    def head(self) -> str:
        return self.revisions[-1]


CATALOG = SchemaLine("catalog", "alembic_version_catalog", Path(__file__).parent / "revisions",
                     ("catalog_0001", "catalog_0002"), "settings")


@dataclass(frozen=True)
class Applied:
    """What :func:`upgrade` did to one store: its revision before (None: made before revisions) and
    after, and the revisions it applied with their one-line descriptions."""

    what: str
    before: str | None
    after: str
    steps: list[tuple[str, str]]


#: ``SchemaLine.what`` of each store, marked for translation (error messages name the store).
_STORE_NAMES = {"catalog": N_("the catalog"), "ledger": N_("the ledger")}


def _display(url: Any) -> str:
    return url.render_as_string(hide_password=True)


def stored_revision(conn: Connection, line: SchemaLine) -> str | None:
    """The revision ``line``'s version table holds, or None when the table does not exist."""
    if not inspect(conn).has_table(line.version_table):
        return None
    row = conn.execute(text(f"SELECT version_num FROM {line.version_table}")).first()
    return None if row is None else str(row[0])


def check(engine: Engine, line: SchemaLine) -> None:
    """Refuse (SchemaError) a store that is not at this code's head revision; one query when it is."""
    try:
        with engine.connect() as conn:
            row = conn.execute(text(f"SELECT version_num FROM {line.version_table}")).first()
    except DBAPIError:  # no version table: made before revisions existed (or not a store at all)
        row = None
    stored = None if row is None else str(row[0])
    if stored == line.head:
        return
    where = _display(engine.url)
    # the store as people read it, in their language ("the catalog"), for the messages below
    what: Message | str = Message(_STORE_NAMES[line.name]) if line.name in _STORE_NAMES else line.what
    if stored is not None and stored not in line.revisions:
        raise SchemaError(Message(
            N_("{what} ({where}) is at schema revision {stored!r}, which this version of Onshore does not know "
               "(its newest is {head!r}): it was upgraded by a newer Onshore; install that version (or newer) to "
               "use this workspace"), {"what": what, "where": where, "stored": stored, "head": line.head}))
    if stored is None:
        raise SchemaError(Message(
            N_("{what} ({where}) was made before schema revisions existed; this version of Onshore needs {head!r}: "
               "run 'onshore upgrade' (it takes a backup first), then run this command again"),
            {"what": what, "where": where, "head": line.head}))
    raise SchemaError(Message(
        N_("{what} ({where}) is at schema revision {stored!r}; this version of Onshore needs {head!r}: run "
           "'onshore upgrade' (it takes a backup first), then run this command again"),
        {"what": what, "where": where, "stored": stored, "head": line.head}))


def alembic_config(conn: Connection, line: SchemaLine):  # type: ignore[no-untyped-def]
    """An Alembic config for ``line`` that runs on ``conn`` (its env.py reads both from the attributes)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(line.scripts))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(line.scripts / "versions"))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = line.version_table
    return cfg


def run_env() -> None:
    """The body of each ``revisions/env.py``: run the migrations Alembic planned on our connection,
    inside the write transaction :func:`upgrade` or :func:`stamp_head` holds."""
    from alembic import context

    conn = context.config.attributes["connection"]
    context.configure(connection=conn, version_table=context.config.attributes["version_table"],
                      transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


def stamp_head(engine: Engine, line: SchemaLine) -> None:
    """Record that a store just made from this code's tables (``create_all``) is at the head revision."""
    from alembic import command

    with write_transaction(engine, line.what) as conn:
        command.stamp(alembic_config(conn, line), line.head)


def pending(engine: Engine, line: SchemaLine) -> str | None:
    """The revision a store is at (None: made before revisions), checked before anything changes:
    refuses (SchemaError) a store made by newer code, or a database holding no store of this kind."""
    with engine.connect() as conn:
        stored = stored_revision(conn, line)
        marked = inspect(conn).has_table(line.marker)
    if stored is not None and stored not in line.revisions:
        check(engine, line)  # refuses: made by newer code
    if stored is None and not marked:
        raise SchemaError(f"{_display(engine.url)} holds no {line.name} (no table {line.marker!r}): check that the "
                          "workspace's onshore.toml points at the right database")
    return stored


def upgrade(engine: Engine, line: SchemaLine) -> Applied:
    """Bring a store to the head revision in one write transaction (other writers wait their turn).

    A store made before revisions existed is first recorded at the baseline (``revisions[0]``),
    whose tables every such store has; the later revisions add what it lacks. Refuses a store at a
    revision this code does not know (made by newer code) before changing anything.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    pending(engine, line)
    with write_transaction(engine, line.what) as conn:
        before = stored_revision(conn, line)  # again, under the lock: another upgrade may have run
        cfg = alembic_config(conn, line)
        script = ScriptDirectory.from_config(cfg)
        if before is None:
            command.stamp(cfg, line.revisions[0])
        start = before or line.revisions[0]
        steps = [(s.revision, (s.doc or "").strip()) for s in script.iterate_revisions(line.head, start)]
        steps.reverse()
        if before is None:
            steps.insert(0, (line.revisions[0], "recorded as the baseline (made before revisions existed)"))
        command.upgrade(cfg, line.head)
        after = stored_revision(conn, line)
    assert after == line.head, (after, line.head)
    return Applied(line.what, before, after, steps)
