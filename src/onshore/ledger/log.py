"""The append-only ledger: signed entries in SQL, with the RFC 9162 tree kept incrementally.

Tables: ``ledger_entries`` (index, kind, actor, leaf bytes), ``ledger_nodes`` (a key made of
level and index, hash; level 0 holds the leaf hashes) holding the hash of every complete subtree,
``ledger_checkpoints``, and ``ledger_heads`` (the newest entry about each subject, an index the
append transaction keeps so that it can link the next entry about it: onshore.ledger.subjects),
``ledger_subject_index`` (every entry by subject) and an index of entries by kind, both kept by
the append transaction, so that a listing about one dataset, or of a few kinds, reads only those.
An append writes its leaf and the subtrees it completes, reading only the compact range (the
right edge, kept in memory); roots and proofs read O(log n) stored nodes in one query. Entries
and nodes are never updated or deleted; heads are replaced as subjects move on.

Writers wait their turn (:func:`onshore.catalog.db.write_transaction`). Appends that arrive
together in one process (threads of a job deciding side by side) are committed as one
transaction by whichever caller is first (group commit); each caller returns once its entries
are committed. ``ledger_attempts`` is a journal beside the log, not part of the tree: an append
may write its rows in the same transaction (see ``onshore.workspace.attempts``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    update,
)

from onshore.catalog.db import Writer, write_transaction
from onshore.catalog.migrate import SchemaLine
from onshore.errors import IntegrityError, OnshoreError
from onshore.ledger import merkle
from onshore.ledger.checkpoint import Checkpoint
from onshore.ledger.entries import Draft, Entry, parse_leaf, sign_entry, verify_entry
from onshore.ledger.subjects import ChainChecker, link_to, parse_link, subjects_of

ledger_metadata = MetaData()

# On SQLite a key declared INTEGER PRIMARY KEY is the table's rowid: a row is stored once, in
# the table's own b-tree, where BIGINT PRIMARY KEY would keep a second index beside it (an
# append writing twice the pages). Databases made before keep their BIGINT keys and work alike.
_Key = BigInteger().with_variant(Integer(), "sqlite")

ledger_entries = Table(
    "ledger_entries",
    ledger_metadata,
    Column("idx", _Key, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(80), nullable=False),
    Column("leaf", LargeBinary, nullable=False),
)
# Entries by kind, oldest first: what ``entries(kinds=...)`` reads (the decision point's governance
# scan, the key service's withdrawals...), so that such a scan reads the entries of those kinds and
# not every leaf of the log. The database keeps it inside each append transaction.
Index("ledger_entries_kind", ledger_entries.c.kind, ledger_entries.c.idx)

ledger_nodes = Table(
    "ledger_nodes",
    ledger_metadata,
    # (level << 56) | index: one integer key, so that a proof's nodes are one indexed IN lookup
    Column("node", _Key, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)


def node_key(level: int, index: int) -> int:
    """The stored key of node (level, index); level < 64 and index < 2**56 cover any real log."""
    return (level << 56) | index


_NODES_BY_KEY = select(ledger_nodes.c.node, ledger_nodes.c.hash).where(
    ledger_nodes.c.node.in_(bindparam("keys", expanding=True)))


# Signed tree heads (C2SP checkpoint notes), with any witness cosignatures merged in.
ledger_checkpoints = Table(
    "ledger_checkpoints",
    ledger_metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
)


# Multi-step commands in flight (see onshore.workspace.attempts and docs/residency.md). A row is
# written in the same transaction as the attempt's allow decision, so no decision that starts an
# attempt can exist without its row; the row goes when the attempt is complete or closed.
ledger_attempts = Table(
    "ledger_attempts",
    ledger_metadata,
    Column("id", String(32), primary_key=True),
    Column("op", String(16), nullable=False),        # ingest | copy | withdraw
    Column("dataset", String(64), nullable=False),
    Column("site", String(64), nullable=True),       # where files are staged (ingest, copy)
    Column("actor", String(80), nullable=False),     # who asked
    Column("decision_index", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),     # open | ledgered (outcome entries appended)
    Column("outcome", Text, nullable=False),         # JSON list of the outcome entries' indices
    Column("started_at", String(32), nullable=False),
)

# The newest entry about each subject (dataset:NAME, model:NAME): what the next entry about it
# links to. Written only inside append transactions; ``verify`` recomputes it from the leaves.
ledger_heads = Table(
    "ledger_heads",
    ledger_metadata,
    Column("subject", String(140), primary_key=True),
    Column("idx", BigInteger, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
)

# Every entry by subject (dataset:NAME, model:NAME): what a page or filter about one dataset reads,
# one indexed query instead of a scan of every leaf. Filled in the append transaction (derived
# from the signed entries; ``verify`` recomputes it, so an edited row is caught).
ledger_subject_index = Table(
    "ledger_subject_index",
    ledger_metadata,
    Column("subject", String(140), primary_key=True),
    Column("idx", BigInteger, primary_key=True),
)

#: The ledger's line of schema revisions (onshore.catalog.migrate; scripts in ledger/revisions).
LEDGER_SCHEMA = SchemaLine("ledger", "alembic_version_ledger", Path(__file__).parent / "revisions",
                           ("ledger_0001", "ledger_0002", "ledger_0003", "ledger_0004"), "ledger_entries")


def subject_index_rows(conn) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """(subject, index) of every entry about a subject, recomputed from the leaves."""
    out = []
    for idx, leaf in conn.execute(select(ledger_entries.c.idx, ledger_entries.c.leaf).order_by(ledger_entries.c.idx)):
        e = parse_leaf(bytes(leaf))
        out += [(s, int(idx)) for s in subjects_of(e.kind, e.body)]
    return out


def fill_subject_index(conn) -> None:  # type: ignore[no-untyped-def]
    """Fill an empty ledger_subject_index from the entries (the revision that adds it)."""
    rows = subject_index_rows(conn)
    for start in range(0, len(rows), 5000):
        conn.execute(insert(ledger_subject_index), [{"subject": s, "idx": i} for s, i in rows[start:start + 5000]])


def fill_heads(conn) -> None:  # type: ignore[no-untyped-def]
    """Fill an empty ledger_heads from the entries: the newest entry about each subject (pre-link
    history: the first linked entry about a subject links to the newest unlinked one)."""
    last: dict[str, tuple[int, bytes]] = {}
    for idx, leaf in conn.execute(select(ledger_entries.c.idx, ledger_entries.c.leaf).order_by(ledger_entries.c.idx)):
        e = parse_leaf(bytes(leaf))
        for s in subjects_of(e.kind, e.body):
            last[s] = (int(idx), merkle.leaf_hash(bytes(leaf)))
    if last:
        conn.execute(insert(ledger_heads), [{"subject": s, "idx": i, "leaf_hash": h} for s, (i, h) in last.items()])


#: ``then(conn, indices)``: run inside an append's transaction, after its entries are inserted.
AppendHook = Callable[[Any, list[int]], None]

#: Most node keys fetched by one query of a batch proof (well under SQLite's variable limit).
_KEYS_PER_QUERY = 5000


@dataclass
class _Pending:
    """One caller's entries waiting in the group-commit queue."""

    entries: Sequence[Entry | Draft]
    then: AppendHook | None
    indices: list[int] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


def _insert_many(cur, paramstyle: str, table: Table, rows: list[tuple]) -> None:  # type: ignore[no-untyped-def,type-arg]
    """Insert rows (tuples in column order) with a DB-API cursor of the append's transaction.

    The ledger's appends are its hot path; SQLAlchemy's per-statement and per-parameter
    processing cost more than the inserts themselves (bench/ledger_bench.py,
    bench/concurrency_bench.py).
    """
    mark = "?" if paramstyle == "qmark" else "%s"
    cols = ", ".join(c.name for c in table.columns)
    cur.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join([mark] * len(table.columns))})", rows)


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry: Entry
    leaf: bytes


@dataclass(frozen=True)
class VerifyReport:
    size: int
    root: bytes
    signatures_checked: int


class Ledger:
    """Append-only, signed, Merkle-hashed log in the database behind ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._edge: dict[tuple[int, int], bytes] = {}
        self._size = -1
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False
        self._heads_ready = False  # ledger_heads is known to exist (older ledgers lack it)
        self._writer = Writer(engine, "the ledger")  # appends' kept-open connection and lock file

    def close(self) -> None:
        """Release the appends' connection and lock file, then the engine's pooled connections."""
        self._writer.close()
        self.engine.dispose()

    # -- reading ---------------------------------------------------------------------------------

    def size(self) -> int:
        with self.engine.connect() as conn:
            return self._count(conn)

    def _getter(self, conn) -> Callable[[int, int], bytes]:  # type: ignore[no-untyped-def]
        def get(level: int, index: int) -> bytes:
            h = self._edge.get((level, index))
            if h is not None:
                return h
            row = conn.execute(select(ledger_nodes.c.hash).where(ledger_nodes.c.node == node_key(level, index))).first()
            if row is None:
                raise IntegrityError(f"ledger node ({level}, {index}) is missing: the ledger store is damaged")
            return bytes(row[0])
        return get

    def _read_plan(self, conn, plan: merkle.NodePlan) -> list[bytes]:  # type: ignore[no-untyped-def]
        """Fetch every node a root or proof needs in one query (O(log n) rows), then fold them."""
        if not plan.node_ids:
            return merkle.assemble(plan, [])
        keys = [node_key(lv, ix) for lv, ix in plan.node_ids]
        found = {int(k): bytes(h) for k, h in conn.execute(_NODES_BY_KEY, {"keys": list(set(keys))})}
        missing = [n for n, k in zip(plan.node_ids, keys, strict=True) if k not in found]
        if missing:
            raise IntegrityError(f"ledger nodes {missing[:3]} are missing: the ledger store is damaged")
        return merkle.assemble(plan, [found[k] for k in keys])

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` entries (default: all)."""
        with self.engine.connect() as conn:
            n = self._count(conn) if size is None else self._check_size(conn, size)
            if n == 0:
                return merkle.EMPTY_ROOT
            return self._read_plan(conn, merkle.root_plan(n))[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 §2.1.3.1 from O(log n) stored nodes, one query."""
        with self.engine.connect() as conn:
            n = self._count(conn) if size is None else self._check_size(conn, size)
            if not 0 <= index < n:
                raise OnshoreError(f"entry {index} is not in a tree of size {n}")
            return self._read_plan(conn, merkle.inclusion_proof_plan(index, n))

    def inclusion_proofs(self, indices: Sequence[int], size: int | None = None) -> list[list[bytes]]:
        """PATH(i, D[size]) for every i in ``indices``, reading their nodes in a few queries.

        For bundles that cite many entries: the proofs share most upper nodes, so each distinct
        node is read once. Refuses an index outside the tree.
        """
        with self.engine.connect() as conn:
            n = self._count(conn) if size is None else self._check_size(conn, size)
            plans = []
            for i in indices:
                if not 0 <= i < n:
                    raise OnshoreError(f"entry {i} is not in a tree of size {n}")
                plans.append(merkle.inclusion_proof_plan(i, n))
            keys = sorted({node_key(lv, ix) for p in plans for lv, ix in p.node_ids})
            found: dict[int, bytes] = {}
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                found.update((int(k), bytes(h)) for k, h in conn.execute(
                    _NODES_BY_KEY, {"keys": keys[start:start + _KEYS_PER_QUERY]}))
        if len(found) != len(keys):
            missing = sorted(set(keys) - set(found))[:3]
            raise IntegrityError(f"ledger nodes {missing} are missing: the ledger store is damaged")
        return [merkle.assemble(p, [found[node_key(lv, ix)] for lv, ix in p.node_ids]) for p in plans]

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[new]) of RFC 9162 §2.1.4.1 from O(log n) stored nodes, one query."""
        with self.engine.connect() as conn:
            n = self._count(conn) if new is None else self._check_size(conn, new)
            if not 0 < old <= n:
                raise OnshoreError(f"old size {old} must be between 1 and the new size {n}")
            return self._read_plan(conn, merkle.consistency_proof_plan(old, n))

    def _count(self, conn) -> int:  # type: ignore[no-untyped-def]
        # max over the primary key is an index lookup; count(*) would scan the table
        top = conn.execute(select(func.max(ledger_entries.c.idx))).scalar_one()
        return 0 if top is None else int(top) + 1

    def _check_size(self, conn, size: int) -> int:  # type: ignore[no-untyped-def]
        n = self._count(conn)
        if not 0 <= size <= n:
            raise OnshoreError(f"tree size {size} is not between 0 and the ledger size {n}")
        return size

    def entries(self, start: int = 0, end: int | None = None, kinds: Sequence[str] | None = None
                ) -> Iterator[StoredEntry]:
        q = select(ledger_entries.c.idx, ledger_entries.c.leaf).where(ledger_entries.c.idx >= start)
        if end is not None:
            q = q.where(ledger_entries.c.idx < end)
        if kinds:
            q = q.where(ledger_entries.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            for idx, leaf in conn.execute(q.order_by(ledger_entries.c.idx)):
                leaf = bytes(leaf)
                yield StoredEntry(int(idx), parse_leaf(leaf), leaf)

    def kinds_since(self, start: int) -> tuple[int, set[str]]:
        """The ledger's size now and the kinds of the entries from ``start`` on (one indexed query,
        no leaf parsing): what a long-running process asks to learn whether a rule may have changed."""
        # Every decision asks this first (Workspace.refresh, forced). Checking a connection out
        # through SQLAlchemy (its BEGIN and ROLLBACK around one read) cost ten times the query: one
        # statement on a pooled DB-API connection reads one consistent snapshot all the same.
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            cur.execute(f"SELECT idx, kind FROM ledger_entries WHERE idx >= {mark}", (start,))
            rows = cur.fetchall()
            cur.close()
        finally:
            raw.close()
        size = max((int(i) for i, _ in rows), default=start - 1) + 1
        return max(size, start), {str(k) for _, k in rows}

    def get(self, index: int) -> StoredEntry:
        for e in self.entries(index, index + 1):
            return e
        raise OnshoreError(f"ledger has no entry {index}")

    # -- appending ---------------------------------------------------------------------------------

    def _load_edge(self, conn, size: int) -> None:  # type: ignore[no-untyped-def]
        """Load the compact range of a tree of ``size`` leaves: one stored node per set bit."""
        ids, pos = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                ids.append((level, pos >> level))
                pos += 1 << level
        # one query: after another process appended, this runs inside the write turn
        found = {int(k): bytes(h) for k, h in conn.execute(
            _NODES_BY_KEY, {"keys": [node_key(lv, ix) for lv, ix in ids]})} if ids else {}
        missing = [n for n in ids if node_key(*n) not in found]
        if missing:
            raise IntegrityError(f"ledger nodes {missing[:3]} are missing: the ledger store is damaged")
        self._edge = {n: found[node_key(*n)] for n in ids}
        self._size = size

    def append(self, entries: Sequence[Entry | Draft], then: AppendHook | None = None) -> list[int]:
        """Append ``entries`` in one transaction; returns their indices. All or none are stored.

        An entry about a subject (a dataset, a model: see onshore.ledger.subjects) must come as a
        :class:`Draft`: it is signed inside the transaction, with its link to the previous entry
        about each of its subjects, so that concurrent writers never link to the same predecessor.
        Drafts about no subject are signed before queueing. Refuses (ValueError) a pre-signed
        entry about a subject, whose link the caller could not know.

        Waits its turn behind other writers (LockTimeout after the configured wait). ``then``,
        if given, runs inside the same transaction with the new indices, so that what it writes
        to the ledger database commits with the entries or not at all. Concurrent callers in
        this process share one transaction (group commit) unless one of them fails, in which
        case each is retried alone so that one caller's failure is never another's.
        """
        if not entries:
            return []
        ready: list[Entry | Draft] = []
        for e in entries:
            if isinstance(e, Draft):
                ready.append(e if subjects_of(e.kind, e.body) else sign_entry(e.kind, e.actor, e.body, e.key, e.time))
            elif subjects_of(e.kind, e.body):
                raise ValueError(f"a {e.kind} entry about {', '.join(subjects_of(e.kind, e.body))} must be appended "
                                 "as a Draft, so that the ledger links it to the previous entry about it")
            else:
                ready.append(e)
        me = _Pending(ready, then)
        with self._cond:
            self._queue.append(me)
            while self._leading and not me.done:
                self._cond.wait()
            if not me.done:
                self._leading = True
                batch, self._queue = self._queue, []
        if not me.done:
            try:
                self._commit_batch(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if me.error is not None:
            raise me.error
        return me.indices

    def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            self._commit(batch)
        except BaseException as e:
            if len(batch) == 1 or not isinstance(e, Exception):
                for p in batch:
                    p.error, p.done = e, True
                if not isinstance(e, Exception):
                    raise
                return
            for p in batch:  # one caller's hook failed the group: each alone, so only it fails
                try:
                    self._commit([p])
                except Exception as one:  # noqa: BLE001 - handed to its own caller
                    p.error = one
                p.done = True
            return
        for p in batch:
            p.done = True

    def _commit(self, batch: list[_Pending]) -> None:
        with self._writer.transaction() as conn:
            cur = conn.connection.dbapi_connection.cursor()  # the same transaction, without SQLAlchemy's toll
            cur.execute("SELECT max(idx) FROM ledger_entries")
            top = cur.fetchone()[0]
            size = 0 if top is None else int(top) + 1
            if size != self._size:  # another process appended since we last looked
                self._load_edge(conn, size)
            edge = dict(self._edge)
            get = self._getter(conn)
            rows, nodes, about = [], [], []
            start = size
            heads: dict[str, tuple[int, bytes] | None] = {}  # subject -> newest entry, as of this batch
            try:
                heads = self._read_heads(conn, cur, batch)
                for p in batch:
                    first = size
                    for e in p.entries:
                        if isinstance(e, Draft):
                            e = self._sign_linked(e, heads)
                        leaf = e.leaf()
                        lh = merkle.leaf_hash(leaf)
                        for subject in (e.links or ()):
                            heads[subject] = (size, lh)
                        new = merkle.nodes_to_store_on_append(size, lh, get)
                        rows.append((size, e.kind, e.actor, leaf))
                        about += [(subject, size) for subject in subjects_of(e.kind, e.body)]
                        nodes += [(node_key(level, idx), h) for level, idx, h in new]
                        # each left sibling merged into a parent leaves the compact range; the
                        # top of the new nodes joins it
                        for level, idx, _ in new[:-1]:
                            del self._edge[(level, idx - 1)]
                        self._edge[new[-1][:2]] = new[-1][2]
                        size += 1
                    p.indices = list(range(first, size))
                _insert_many(cur, conn.dialect.paramstyle, ledger_entries, rows)
                _insert_many(cur, conn.dialect.paramstyle, ledger_nodes, nodes)
                if about:
                    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
                    cur.executemany(f"INSERT INTO ledger_subject_index (subject, idx) VALUES ({mark}, {mark})", about)
                moved = [(s, h[0], h[1]) for s, h in heads.items() if h is not None and h[0] >= start]
                if moved:
                    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
                    # SQLite and PostgreSQL both take ON CONFLICT; one statement on the hot path
                    cur.executemany("INSERT INTO ledger_heads (subject, idx, leaf_hash) "
                                    f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (subject) "
                                    "DO UPDATE SET idx = excluded.idx, leaf_hash = excluded.leaf_hash", moved)
                for p in batch:
                    if p.then is not None:
                        p.then(conn, p.indices)
            except BaseException:
                self._edge, self._size = edge, -1
                self._heads_ready = False  # a heads table made in this transaction went with it
                raise
        self._size = size

    def _read_heads(self, conn, cur, batch: list[_Pending]) -> dict[str, tuple[int, bytes] | None]:  # type: ignore[no-untyped-def]
        """The newest entry about each subject the batch's drafts are about (None: no entry yet),
        read in one query inside the append transaction (DB-API cursor: the hot path)."""
        wanted = sorted({s for p in batch for e in p.entries if isinstance(e, Draft)
                         for s in subjects_of(e.kind, e.body)})
        if not wanted:
            return {}
        self._ensure_heads(conn)
        heads: dict[str, tuple[int, bytes] | None] = dict.fromkeys(wanted)
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        for start in range(0, len(wanted), 500):  # under every driver's parameter limit
            part = wanted[start:start + 500]
            cur.execute(f"SELECT subject, idx, leaf_hash FROM ledger_heads WHERE subject IN "
                        f"({', '.join([mark] * len(part))})", part)
            heads.update({r[0]: (int(r[1]), bytes(r[2])) for r in cur.fetchall()})
        return heads

    @staticmethod
    def _sign_linked(draft: Draft, heads: dict[str, tuple[int, bytes] | None]) -> Entry:
        """Sign ``draft`` with a link per subject to the newest entry about it (``heads``)."""
        links = {s: (None if (h := heads[s]) is None else link_to(*h)) for s in subjects_of(draft.kind, draft.body)}
        return sign_entry(draft.kind, draft.actor, draft.body, draft.key, draft.time, links)

    def _ensure_heads(self, conn) -> None:  # type: ignore[no-untyped-def]
        """Make ledger_heads in a bare ledger created before it existed (a workspace's ledger gets it
        from ``onshore upgrade``: revision ledger_0002)."""
        if self._heads_ready:
            return
        if not conn.dialect.has_table(conn, ledger_heads.name):
            ledger_heads.create(conn)
            fill_heads(conn)
        self._heads_ready = True

    # -- subjects ------------------------------------------------------------------------------------

    def subject_head(self, subject: str, size: int | None = None) -> StoredEntry | None:
        """The newest entry about ``subject`` among the first ``size`` entries (default: all), or None.

        Follows the subject's links back from its current head, so it reads only entries about it.
        """
        with self.engine.connect() as conn:
            n = self._count(conn) if size is None else self._check_size(conn, size)
            if not conn.dialect.has_table(conn, ledger_heads.name):
                row = None
            else:
                row = conn.execute(select(ledger_heads.c.idx).where(ledger_heads.c.subject == subject)).first()
        at: int | None = None if row is None else int(row[0])
        while at is not None and at >= n:
            e = self.get(at)
            if e.entry.links is None:  # pre-link history: scan for it below
                row = None
                break
            link = parse_link(e.entry.links.get(subject))
            at = None if link is None else link[0]
        if row is None:  # a ledger from before links (or a pre-link part of one): scan
            found = None
            for e in self.entries(0, n):
                if subject in subjects_of(e.entry.kind, e.entry.body):
                    found = e
            return found
        return None if at is None else self.get(at)

    def subject_indices(self, subject: str, before: int | None = None, limit: int | None = None) -> list[int]:
        """Indices of the entries about ``subject`` (below ``before``), newest first, at most
        ``limit``: one indexed query whatever the size of the ledger."""
        q = select(ledger_subject_index.c.idx).where(ledger_subject_index.c.subject == subject)
        if before is not None:
            q = q.where(ledger_subject_index.c.idx < before)
        q = q.order_by(ledger_subject_index.c.idx.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(q)]

    def subject_entries(self, subject: str, start: int = 0, size: int | None = None) -> list[StoredEntry]:
        """Every entry about ``subject`` with ``start <= index < size``, ascending, found by its links.

        Pre-link entries (before links existed) are found by a scan of that part of the log.
        """
        head = self.subject_head(subject, size)
        out: list[StoredEntry] = []
        e = head
        while e is not None and e.index >= start:
            out.append(e)
            if e.entry.links is None:
                out += [x for x in reversed(list(self.entries(start, e.index)))
                        if subject in subjects_of(x.entry.kind, x.entry.body)]
                break
            link = parse_link(e.entry.links.get(subject))
            e = None if link is None else self.get(link[0])
        return out[::-1]

    # -- checkpoints -------------------------------------------------------------------------------

    def store_checkpoint(self, size: int, note: str) -> None:
        """Keep the signed checkpoint note for ``size``, replacing an earlier note of that size."""
        with write_transaction(self.engine, "the ledger") as conn:
            exists = conn.execute(select(ledger_checkpoints.c.size).where(ledger_checkpoints.c.size == size)).first()
            if exists:
                conn.execute(update(ledger_checkpoints).where(ledger_checkpoints.c.size == size).values(note=note))
            else:
                conn.execute(insert(ledger_checkpoints).values(size=size, note=note))

    def checkpoint_note(self, size: int | None = None) -> str | None:
        """The stored note for ``size``, or the newest one when ``size`` is None."""
        q = select(ledger_checkpoints.c.note)
        q = q.where(ledger_checkpoints.c.size == size) if size is not None else q.order_by(
            ledger_checkpoints.c.size.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return row[0] if row else None

    # -- verification ------------------------------------------------------------------------------

    def checkpoint_sizes(self) -> list[int]:
        """The sizes of every stored checkpoint, ascending."""
        with self.engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(select(ledger_checkpoints.c.size).order_by(
                ledger_checkpoints.c.size))]

    def verify(self, key_for: Callable[[str], Ed25519PublicKey | None],
               open_checkpoint: Callable[[str], Checkpoint] | None = None,
               progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Recompute every signature and the tree root from the leaves alone.

        ``key_for(actor)`` gives the public key of an actor. Raises IntegrityError naming the first
        entry whose signature, leaf hash or canonical form is wrong, or a root mismatch. With
        ``open_checkpoint`` (which checks a stored note's signature and parses it), the largest
        stored checkpoint must also match the tree recomputed from the leaves: a ledger shorter
        than a checkpoint it once signed has lost entries (truncation), which is an error.
        ``progress(done, total)`` is called every 1,000 entries and at the end (the dashboard's bar).
        """
        hashes: list[bytes] = []
        total = self.size() if progress is not None else 0
        chains = ChainChecker()
        with self.engine.connect() as conn:
            # a leaf's hash is stored once, as the level-0 node whose key is the entry index
            q = select(ledger_entries.c.idx, ledger_entries.c.leaf, ledger_nodes.c.hash).join_from(
                ledger_entries, ledger_nodes, ledger_nodes.c.node == ledger_entries.c.idx, isouter=True).order_by(
                ledger_entries.c.idx)
            for expect, (idx, leaf, stored_hash) in enumerate(conn.execute(q)):
                if idx != expect:
                    raise IntegrityError(f"ledger entry {expect} is missing (next stored index is {idx})")
                leaf = bytes(leaf)
                try:
                    entry = parse_leaf(leaf)
                except IntegrityError as e:
                    raise IntegrityError(f"ledger entry {idx}: {e}") from None
                key = key_for(entry.actor)
                if key is None:
                    raise IntegrityError(f"ledger entry {idx}: actor {entry.actor!r} has no known public key")
                try:
                    verify_entry(entry, key)
                except IntegrityError as e:
                    raise IntegrityError(f"ledger entry {idx}: {e}") from None
                lh = merkle.leaf_hash(leaf)
                if stored_hash is None or lh != bytes(stored_hash):
                    raise IntegrityError(f"ledger entry {idx}: stored leaf hash does not match its bytes")
                broken = chains.feed(idx, entry, lh)
                if broken is not None:
                    raise IntegrityError(f"ledger entry {idx}: {broken}")
                hashes.append(lh)
                if progress is not None and len(hashes) % 1000 == 0:
                    progress(len(hashes), max(total, len(hashes)))
            if progress is not None:
                progress(len(hashes), len(hashes))
            recomputed = merkle.root_from_leaf_hashes(hashes)
            stored = merkle.root_at(len(hashes), self._getter(conn))
            if conn.dialect.has_table(conn, ledger_heads.name):
                kept = {r[0]: (int(r[1]), bytes(r[2])) for r in conn.execute(select(ledger_heads))}
                want = {s: chains.last[s] for s in chains.linked}
                if any(kept.get(s) != h for s, h in want.items()):
                    bad = sorted(s for s, h in want.items() if kept.get(s) != h)
                    raise IntegrityError(
                        f"the ledger_heads table disagrees with the entries for {', '.join(bad[:3])}: the ledger store "
                        "was altered; restore it from a backup")
            if conn.dialect.has_table(conn, ledger_subject_index.name):
                kept_index = {(r[0], int(r[1])) for r in conn.execute(select(ledger_subject_index))}
                if kept_index != set(subject_index_rows(conn)):
                    raise IntegrityError("the ledger_subject_index table disagrees with the entries: the ledger store "
                                         "was altered; restore it from a backup")
        if recomputed != stored:
            raise IntegrityError(
                "ledger tree root recomputed from the entries does not match the stored tree nodes: "
                f"{recomputed.hex()} != {stored.hex()}"
            )
        note = self.checkpoint_note() if open_checkpoint is not None else None
        if note is not None and open_checkpoint is not None:
            try:
                cp = open_checkpoint(note)
            except OnshoreError as e:
                raise IntegrityError(f"the newest stored checkpoint does not verify: {e}") from None
            if cp.size > len(hashes):
                raise IntegrityError(
                    f"the ledger holds {len(hashes)} entries but the log signed a checkpoint of size {cp.size}: "
                    "entries were removed (truncation); restore the ledger database from a backup")
            if merkle.root_from_leaf_hashes(hashes[:cp.size]) != cp.root_hash:
                raise IntegrityError(
                    f"the stored checkpoint of size {cp.size} does not match the tree recomputed from the entries: "
                    "the ledger was rewritten after it was signed; restore it from a backup")
        return VerifyReport(len(hashes), recomputed, len(hashes))
