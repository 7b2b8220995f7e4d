"""Open a catalog or ledger database by URL: ``sqlite:///path`` (the embedded default) or ``postgresql://``."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.exc import ArgumentError, OperationalError

from onshore.errors import OnshoreError


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_connection.cursor()
    # WAL keeps readers off the writer's back; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_engine(url: str, tables: MetaData, create: bool = False) -> Engine:
    """An engine for ``url``; ``create`` makes the missing ``tables`` (catalog's or ledger's).

    ``postgresql://`` URLs are driven by psycopg 3. Refuses an unreachable server or a bad URL
    with an OnshoreError that names the URL.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        engine = create_engine(url)
    except ModuleNotFoundError as e:
        if e.name == "psycopg":
            raise OnshoreError(f"cannot open database {url!r}: PostgreSQL support is not installed; "
                               "run: pip install 'onshore[postgres]'") from None
        raise OnshoreError(f"cannot open database {url!r}: {e}") from None
    except (ArgumentError, ImportError) as e:
        raise OnshoreError(f"cannot open database {url!r}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        if create:
            tables.create_all(engine)
        else:
            with engine.connect():
                pass
    except OperationalError as e:
        raise OnshoreError(f"cannot reach database {url!r}: {e.orig}") from None
    return engine
