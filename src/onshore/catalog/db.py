"""Open a catalog or ledger database by URL, and write to it one writer at a time.

``sqlite:///path`` is the embedded default, ``postgresql://`` the scale-out. Every write goes
through :func:`write_transaction`, which waits its turn (SQLite: ``BEGIN IMMEDIATE`` under a busy
timeout; PostgreSQL: a transaction-scoped advisory lock under a lock timeout) for at most
:func:`lock_timeout` seconds, so commands run side by side serialise instead of failing.
"""

from __future__ import annotations

import fcntl
import os
import threading
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


class _Turns(threading.local):
    """Per thread: the (database, store) write turns it is inside (``settled_read`` must not wait
    for a turn its own thread holds)."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str]] = set()


_turns = _Turns()


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
    # Straight to the driver: SQLAlchemy's statement path costs more than the BEGIN itself, and
    # the ledger's appends begin thousands of transactions a second.
    conn.connection.dbapi_connection.execute(
        "BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


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
    timed_out = _timed_out(engine, what, limit, started)
    turn = _open_turn(engine)
    try:
        if turn is not None:
            _take_turn(turn, started + limit, timed_out)
        _waited[0] += time.monotonic() - started
        with engine.connect() as conn, _transaction(conn, what, limit, timed_out), _inside(engine, what):
            yield conn
    finally:
        if turn is not None:
            turn.close()  # releases the flock


@contextmanager
def settled_read(engine: Engine, what: str) -> Iterator[Connection]:
    """A connection to read ``what`` when no other writer is between its steps.

    A command appends its ledger entry and then commits its catalog rows, both in the catalog's
    write turn, so a reader can see the entry without the rows. Read in a write turn, which waits
    for the writer in progress to commit; a thread already inside that turn reads directly (no
    other writer can be in progress, and waiting for itself would never end). For the rare read
    that found the two disagreeing: what still disagrees here is no race.
    """
    if (str(engine.url), what) in _turns.held:
        with engine.connect() as conn:
            yield conn
        return
    with write_transaction(engine, what) as conn:
        yield conn


@contextmanager
def _inside(engine: Engine, what: str) -> Iterator[None]:
    key = (str(engine.url), what)
    outer = key in _turns.held
    _turns.held.add(key)
    try:
        yield
    finally:
        if not outer:
            _turns.held.discard(key)


class Writer:
    """Write transactions on one store over a connection and a lock file kept open between them.

    The same turns and the same waits as :func:`write_transaction`, for a hot path that commits
    many small transactions (the ledger's appends): opening the lock file and checking a
    connection out of the pool cost more than such a transaction. Not for concurrent use: its
    owner runs one transaction at a time (the ledger's group-commit leader). Another writer of the
    same store, in this process or any other, still waits for its turn, since each
    ``write_transaction`` opens its own lock file. A forked child opens its own connection and
    file; ``close`` releases both.
    """

    def __init__(self, engine: Engine, what: str) -> None:
        self.engine, self.what = engine, what
        self._conn: Connection | None = None
        self._turn: IO[str] | None = None
        self._pid = -1
        self._inherited: list[object] = []

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction, as :func:`write_transaction`; the connection is dropped on any error."""
        limit = lock_timeout()
        started = time.monotonic()
        timed_out = _timed_out(self.engine, self.what, limit, started)
        if self._pid != os.getpid():
            # a forked child must not use (or close) its parent's SQLite handle or share its
            # lock file's open description; keep them referenced so that nothing closes them here
            self._inherited.append((self._conn, self._turn))
            self._conn, self._turn, self._pid = None, _open_turn(self.engine), os.getpid()
        if self._turn is not None:
            _take_turn(self._turn, started + limit, timed_out)
        try:
            _waited[0] += time.monotonic() - started
            if self._conn is None:
                self._conn = self.engine.connect()
            try:
                with _transaction(self._conn, self.what, limit, timed_out):
                    yield self._conn
            except BaseException:
                self._drop()
                raise
        finally:
            if self._turn is not None:
                fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection is being discarded anyway
                pass

    def close(self) -> None:
        """Close the kept connection and lock file (in the process that opened them)."""
        if self._pid == os.getpid():
            self._drop()
            if self._turn is not None:
                self._turn.close()
        self._conn, self._turn, self._pid = None, None, -1


def _timed_out(engine: Engine, what: str, limit: float, started: float) -> Callable[[], LockTimeout]:
    def timed_out() -> LockTimeout:
        waited = time.monotonic() - started
        return LockTimeout(
            f"waited {waited:.0f} s for the write lock on {what} ({engine.url.render_as_string(hide_password=True)}): "
            f"another onshore command is writing and has not finished; let it finish (or stop it) and run "
            f"this again, or wait longer with ${LOCK_TIMEOUT_VAR}=SECONDS (now {limit:g})")
    return timed_out


def _open_turn(engine: Engine) -> IO[str] | None:
    """The lock file beside an SQLite database (None for PostgreSQL or an in-memory database)."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        return None
    return open(f"{path}-writer.lock", "a")  # noqa: SIM115 - the caller closes it


def _take_turn(f: IO[str], deadline: float, timed_out: Callable[[], LockTimeout]) -> None:
    """Queue for an SQLite database's write turn on its lock file.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so eight waiting writers hand
    the lock on slowly; a flock taken first is handed on within a fraction of a millisecond.
    """
    delay = 0.0001
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise timed_out() from None
            time.sleep(delay)
            delay = min(delay * 2, 0.002)


@contextmanager
def _transaction(conn: Connection, what: str, limit: float, timed_out: Callable[[], LockTimeout]
                 ) -> Iterator[None]:
    engine = conn.engine
    if engine.dialect.name == "sqlite" and not conn.get_execution_options().get(_IMMEDIATE):
        conn.execution_options(**{_IMMEDIATE: True})  # this connection's transactions take the write lock first
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
        yield
