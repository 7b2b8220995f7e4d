"""Open a catalog or ledger database by URL, and write to it one writer at a time.

``sqlite:///path`` is the embedded default, ``postgresql://`` the scale-out. Every write goes
through :func:`write_transaction`, which waits its turn (SQLite: ``BEGIN IMMEDIATE`` under a busy
timeout; PostgreSQL: a transaction-scoped advisory lock under a lock timeout) for at most
:func:`lock_timeout` seconds, so commands run side by side serialise instead of failing.
"""

from __future__ import annotations

import fcntl
import os
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.exc import ArgumentError, OperationalError

from onshore.errors import LockTimeout, OnshoreError

#: Seconds a writer waits for its turn before giving up (``$ONSHORE_LOCK_TIMEOUT`` overrides).
DEFAULT_LOCK_TIMEOUT = 120.0
LOCK_TIMEOUT_VAR = "ONSHORE_LOCK_TIMEOUT"
_IMMEDIATE = "onshore_immediate"

_waited = [0.0]  # seconds this process's write transactions spent waiting for their turn


def seconds_waited() -> float:
    """Total seconds this process has waited for write turns (benchmarks take differences)."""
    return _waited[0]


def lock_timeout() -> float:
    """The configured wait for a write turn, in seconds; refuses a value that is not a positive number."""
    text = os.environ.get(LOCK_TIMEOUT_VAR)
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise OnshoreError(f"${LOCK_TIMEOUT_VAR}={text!r}: give the seconds to wait for a write turn, e.g. 120")
    return value


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # The driver's own transaction handling would BEGIN (deferred) behind our back; we emit BEGIN
    # ourselves in _sqlite_begin so that writers can ask for BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    # WAL keeps readers off the writer's back; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={int(lock_timeout() * 1000)}")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT) when
    # another writer committed in between; an immediate one takes the write lock first, waiting
    # under busy_timeout. Readers stay deferred so that they never wait.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


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
        event.listen(engine, "begin", _sqlite_begin)
    try:
        if create:
            with write_transaction(engine, "the new database") as conn:
                tables.create_all(conn)
        else:
            with engine.connect():
                pass
    except OperationalError as e:
        raise OnshoreError(f"cannot reach database {url!r}: {e.orig}") from None
    return engine


def _lock_key(engine: Engine, what: str) -> int:
    # One advisory lock per database and store: catalog and ledger may share a server or even a
    # database, and a catalog writer appends to the ledger while it holds the catalog's lock.
    return zlib.crc32(f"onshore-writer:{engine.url.database}:{what}".encode()) - (1 << 31)


def _is_lock_wait_failure(e: OperationalError) -> bool:
    text = str(e.orig).lower()
    return "locked" in text or "lock timeout" in text or "canceling statement" in text or "busy" in text


@contextmanager
def write_transaction(engine: Engine, what: str) -> Iterator[Connection]:
    """A transaction that holds ``engine``'s database for writing until it commits or rolls back.

    ``what`` names the store ("the catalog", "the ledger"): writers of the same store take
    turns; on PostgreSQL it also keys the advisory lock. Waits up to :func:`lock_timeout`
    seconds for another writer to finish, then raises LockTimeout naming ``what`` it waited for
    and how to wait longer. Commits on a normal exit, rolls back on any exception.
    """
    limit = lock_timeout()
    started = time.monotonic()

    def timed_out() -> LockTimeout:
        waited = time.monotonic() - started
        return LockTimeout(
            f"waited {waited:.0f} s for the write lock on {what} ({engine.url.render_as_string(hide_password=True)}): "
            f"another onshore command is writing and has not finished; let it finish (or stop it) and run "
            f"this again, or wait longer with ${LOCK_TIMEOUT_VAR}=SECONDS (now {limit:g})")

    turn = _sqlite_turn(engine, started + limit, timed_out)
    _waited[0] += time.monotonic() - started
    try:
        with _transaction(engine, what, limit, timed_out) as conn:
            yield conn
    finally:
        if turn is not None:
            turn.close()  # releases the flock


def _sqlite_turn(engine: Engine, deadline: float, timed_out: Callable[[], LockTimeout]) -> IO[str] | None:
    """Queue for an SQLite database's write turn on a lock file beside it.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so eight waiting writers hand
    the lock on slowly; a flock taken first is handed on within a fraction of a millisecond.
    """
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        return None
    f = open(f"{path}-writer.lock", "a")  # noqa: SIM115 - closed by the caller to release the turn
    delay = 0.0001
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise timed_out() from None
            time.sleep(delay)
            delay = min(delay * 2, 0.002)


@contextmanager
def _transaction(engine: Engine, what: str, limit: float, timed_out: Callable[[], LockTimeout]
                 ) -> Iterator[Connection]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_IMMEDIATE: True})
        try:
            tx = conn.begin()
            if engine.dialect.name == "postgresql":
                t = time.monotonic()
                conn.exec_driver_sql(f"SELECT set_config('lock_timeout', '{int(limit * 1000)}', true), "
                                     f"pg_advisory_xact_lock({_lock_key(engine, what)})")
                _waited[0] += time.monotonic() - t
        except OperationalError as e:
            if _is_lock_wait_failure(e):
                raise timed_out() from None
            raise
        with tx:
            yield conn
