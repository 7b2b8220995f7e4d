"""The SQL ledger: signed entries, incremental RFC 9162 tree, verification that catches tampering."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from onshore.catalog.db import open_engine
from onshore.errors import IntegrityError
from onshore.ledger import merkle
from onshore.ledger.entries import Entry, canonical_json, parse_leaf, sign_entry
from onshore.ledger.log import Ledger, ledger_metadata
from onshore.workspace import Workspace


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(open_engine(f"sqlite:///{tmp_path / 'l.db'}", ledger_metadata, create=True))


KEY = Ed25519PrivateKey.generate()


def _entries(n: int, start: int = 0) -> list[Entry]:
    return [sign_entry("decision", "site:a", {"i": start + i}, KEY) for i in range(n)]


def test_appends_keep_the_rfc9162_root(ledger: Ledger) -> None:
    leaves: list[bytes] = []
    for batch in (1, 2, 5, 1, 13, 64, 3):
        es = _entries(batch, len(leaves))
        idx = ledger.append(es)
        assert idx == list(range(len(leaves), len(leaves) + batch))
        leaves += [e.leaf() for e in es]
        assert ledger.root() == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])
    # older roots and proofs come from stored nodes too
    for size in (1, 7, 20, len(leaves)):
        root = merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves[:size]])
        assert ledger.root(size) == root
        merkle.verify_inclusion(size - 1, size, merkle.leaf_hash(leaves[size - 1]),
                                ledger.inclusion_proof(size - 1, size), root)
    report = ledger.verify(lambda actor: KEY.public_key())
    assert report.size == len(leaves)


def test_a_reopened_ledger_continues_the_same_tree(tmp_path: Path, ledger: Ledger) -> None:
    ledger.append(_entries(11))
    again = Ledger(open_engine(f"sqlite:///{tmp_path / 'l.db'}", ledger_metadata))
    again.append(_entries(6, 11))
    leaves = [e.leaf for e in again.entries()]
    assert again.root() == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves])


def test_entries_are_canonical_and_signed() -> None:
    e = sign_entry("data.ingest", "site:a", {"b": 1, "a": [1, 2]}, KEY, time="2026-01-01T00:00:00Z")
    assert e.leaf().startswith(b'{"actor":"site:a","body":{"a":[1,2],"b":1}')
    assert parse_leaf(e.leaf()) == e
    with pytest.raises(IntegrityError, match="canonical"):
        parse_leaf(e.leaf().replace(b'{"actor"', b'{ "actor"'))
    with pytest.raises(ValueError):
        sign_entry("nonsense", "site:a", {}, KEY)


def _tamper(db: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql, args)


def test_verify_catches_tampering(tmp_path: Path, ledger: Ledger) -> None:
    db = tmp_path / "l.db"
    ledger.append(_entries(9))
    ok = lambda actor: KEY.public_key()  # noqa: E731
    ledger.verify(ok)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(IntegrityError, match="signature of decision entry"):
        ledger.verify(lambda actor: other.public_key())

    original = next(iter(ledger.entries(4, 5))).leaf
    forged = original.replace(b'"i":4', b'"i":5')
    _tamper(db, "UPDATE ledger_entries SET leaf = ? WHERE idx = 4", forged)
    with pytest.raises(IntegrityError, match="entry 4: signature"):
        ledger.verify(ok)
    _tamper(db, "UPDATE ledger_entries SET leaf = ? WHERE idx = 4", original)
    ledger.verify(ok)

    # a validly signed entry swapped in (re-signed by the same key) breaks the leaf hash
    resigned = sign_entry("decision", "site:a", {"i": 99}, KEY).leaf()
    _tamper(db, "UPDATE ledger_entries SET leaf = ? WHERE idx = 2", resigned)
    with pytest.raises(IntegrityError, match="entry 2: stored leaf hash"):
        ledger.verify(ok)


def test_verify_catches_deletion_and_reordering(tmp_path: Path, ledger: Ledger) -> None:
    db = tmp_path / "l.db"
    ledger.append(_entries(8))
    ok = lambda actor: KEY.public_key()  # noqa: E731
    rows = {i: (e.leaf, merkle.leaf_hash(e.leaf)) for i, e in enumerate(x for x in ledger.entries())}
    # swap two entries, with their leaf hashes: signatures still verify, the root does not
    for a, b in ((3, 5), (5, 3)):
        _tamper(db, "UPDATE ledger_entries SET leaf = ? WHERE idx = ?", rows[b][0], a)
        _tamper(db, "UPDATE ledger_nodes SET hash = ? WHERE node = ?", rows[b][1], a)
    with pytest.raises(IntegrityError, match="root recomputed"):
        ledger.verify(ok)
    _tamper(db, "DELETE FROM ledger_entries WHERE idx = 3")
    with pytest.raises(IntegrityError, match="entry 3 is missing"):
        ledger.verify(ok)


def test_workspace_ledger_verifies_with_registered_keys(ws: Workspace) -> None:
    report = ws.verify_ledger()
    assert report.size == ws.ledger.size() > 5
    kinds = [e.entry.kind for e in ws.ledger.entries()]
    assert kinds[:4] == ["workspace.init", "site.add", "site.add", "site.add"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_canonical_json_fast_path_matches_rfc8785(value: object) -> None:
    import rfc8785

    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        return  # values RFC 8785 refuses (e.g. integers beyond 2**53) are refused by both
    assert canonical_json(value) == expected


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.sampled_from(["site:a", "member:b", "log"]))
def test_signed_entry_leaf_is_the_canonical_form(body: dict, actor: str) -> None:  # type: ignore[type-arg]
    import rfc8785

    try:
        rfc8785.dumps(body)
    except rfc8785.CanonicalizationError:
        return
    e = sign_entry("decision", actor, body, KEY)
    assert e.leaf() == rfc8785.dumps({**e.unsigned(), "sig": e.sig})
    try:
        rfc8785.dumps(json.loads(e.leaf()))
    except rfc8785.CanonicalizationError:
        return  # e.g. 2.0**53 reads back as an int beyond the safe range: such bodies are not used
    assert parse_leaf(e.leaf()) == e
