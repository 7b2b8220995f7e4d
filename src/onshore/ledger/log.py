"""The append-only ledger: signed entries in SQL, with the RFC 9162 tree kept incrementally.

Tables: ``ledger_entries`` (index, kind, actor, leaf bytes), ``ledger_nodes`` (a key made of
level and index, hash; level 0 holds the leaf hashes) holding the hash of every complete subtree, and
``ledger_checkpoints``. An append writes its leaf and the subtrees it completes, reading only the
compact range (the right edge, kept in memory); roots and proofs read O(log n) stored nodes in
one query. Entries and nodes are never updated or deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
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
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from onshore.errors import IntegrityError, OnshoreError
from onshore.ledger import merkle
from onshore.ledger.entries import Entry, parse_leaf, verify_entry

ledger_metadata = MetaData()

ledger_entries = Table(
    "ledger_entries",
    ledger_metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(80), nullable=False),
    Column("leaf", LargeBinary, nullable=False),
)

ledger_nodes = Table(
    "ledger_nodes",
    ledger_metadata,
    # (level << 56) | index: one integer key, so that a proof's nodes are one indexed IN lookup
    Column("node", BigInteger, primary_key=True, autoincrement=False),
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


def _insert_many(conn, table: Table, rows: list[tuple]) -> None:  # type: ignore[no-untyped-def,type-arg]
    """Insert rows (tuples in column order) straight through the DB-API driver.

    The ledger's appends are its hot path; SQLAlchemy's per-parameter processing cost more than
    the inserts themselves (bench/ledger_bench.py).
    """
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cols = ", ".join(c.name for c in table.columns)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join([mark] * len(table.columns))})",
                         rows)


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

    def get(self, index: int) -> StoredEntry:
        for e in self.entries(index, index + 1):
            return e
        raise OnshoreError(f"ledger has no entry {index}")

    # -- appending ---------------------------------------------------------------------------------

    def _load_edge(self, conn, size: int) -> None:  # type: ignore[no-untyped-def]
        """Load the compact range of a tree of ``size`` leaves: one stored node per set bit."""
        self._edge = {}
        pos = 0
        get = self._getter(conn)
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                idx = pos >> level
                self._edge[(level, idx)] = get(level, idx)
                pos += 1 << level
        self._size = size

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append ``entries`` in one transaction; returns their indices. All or none are stored."""
        if not entries:
            return []
        with self.engine.begin() as conn:
            size = self._count(conn)
            if size != self._size:  # another process appended since we last looked
                self._load_edge(conn, size)
            edge = dict(self._edge)
            get = self._getter(conn)
            rows, nodes, first = [], [], size
            try:
                for e in entries:
                    leaf = e.leaf()
                    lh = merkle.leaf_hash(leaf)
                    new = merkle.nodes_to_store_on_append(size, lh, get)
                    rows.append((size, e.kind, e.actor, leaf))
                    nodes += [(node_key(level, idx), h) for level, idx, h in new]
                    # each left sibling merged into a parent leaves the compact range; the top
                    # of the new nodes joins it
                    for level, idx, _ in new[:-1]:
                        del self._edge[(level, idx - 1)]
                    self._edge[new[-1][:2]] = new[-1][2]
                    size += 1
                _insert_many(conn, ledger_entries, rows)
                _insert_many(conn, ledger_nodes, nodes)
            except SQLIntegrityError:
                self._edge, self._size = edge, -1
                raise OnshoreError("another process appended to the ledger at the same time; retry") from None
            except BaseException:
                self._edge, self._size = edge, -1
                raise
        self._size = size
        return list(range(first, size))

    # -- checkpoints -------------------------------------------------------------------------------

    def store_checkpoint(self, size: int, note: str) -> None:
        """Keep the signed checkpoint note for ``size``, replacing an earlier note of that size."""
        with self.engine.begin() as conn:
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

    def verify(self, key_for: Callable[[str], Ed25519PublicKey | None]) -> VerifyReport:
        """Recompute every signature and the tree root from the leaves alone.

        ``key_for(actor)`` gives the public key of an actor. Raises IntegrityError naming the first
        entry whose signature, leaf hash or canonical form is wrong, or a root mismatch.
        """
        hashes: list[bytes] = []
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
                hashes.append(lh)
            recomputed = merkle.root_from_leaf_hashes(hashes)
            stored = merkle.root_at(len(hashes), self._getter(conn))
        if recomputed != stored:
            raise IntegrityError(
                "ledger tree root recomputed from the entries does not match the stored tree nodes: "
                f"{recomputed.hex()} != {stored.hex()}"
            )
        return VerifyReport(len(hashes), recomputed, len(hashes))
