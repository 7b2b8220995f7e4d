"""RFC 9162 Merkle tree: conformance vectors, incremental tree against the RFC reference, properties."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onshore.errors import IntegrityError, ValidationError
from onshore.ledger import merkle
from onshore.ledger.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    ProofError,
    consistency_proof,
    consistency_proof_plan,
    inclusion_proof,
    inclusion_proof_plan,
    leaf_hash,
    node_hash,
    nodes_to_store_on_append,
    root_at,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VECTORS = PROJECT_ROOT.parent / "shared" / "conformance" / "rfc9162"


# --- the RFC 9162 definitions, written literally, as references --------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) exactly as RFC 9162 §2.1.3.1 defines it."""
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return ref_path(m, leaves[:k]) + [root_from_leaf_hashes(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [root_from_leaf_hashes(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) exactly as RFC 9162 §2.1.4.1 defines it."""
    n = len(leaves)
    if m == n:
        return [] if b else [root_from_leaf_hashes(leaves)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, leaves[:k], b) + [root_from_leaf_hashes(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [root_from_leaf_hashes(leaves[:k])]


def rfc_walk(index: int, size: int, h: bytes, proof: list[bytes]) -> tuple[bool, bytes]:
    """RFC 9162 §2.1.3.2 steps 2-4: (whether the walk ends with sn = 0, the hash it computes).

    Stops early (returning False) when a proof element is left over after sn reaches 0.
    """
    fn, sn, r = index, size - 1, h
    for p in proof:
        if sn == 0:
            return False, r
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0, r


def rfc_verify_inclusion(index: int, size: int, h: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2 step by step, to cross-check the faster implementation."""
    if index >= size:
        return False
    ok, r = rfc_walk(index, size, h, proof)
    return ok and r == root


LEAVES = [leaf_hash(b"entry %d" % i) for i in range(70)]


@pytest.fixture(scope="module")
def store70() -> MemoryNodeStore:
    s = MemoryNodeStore()
    for h in LEAVES:
        s.append_leaf_hash(h)
    return s


# --- conformance vectors -------------------------------------------------------------------------


def _vector_files() -> list[Path]:
    return sorted(VECTORS.rglob("*.json"))


def test_vectors_present() -> None:
    assert VECTORS.is_dir(), f"conformance vectors missing at {VECTORS}"
    assert len(_vector_files()) >= 190


def _b(x: str) -> bytes:
    return base64.b64decode(x)


@pytest.mark.parametrize("path", _vector_files(), ids=lambda p: str(p.relative_to(VECTORS)))
def test_conformance_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]
    if "leafIdx" in case:

        def run() -> None:
            verify_inclusion(case["leafIdx"], case["treeSize"], _b(case["leafHash"]), proof, _b(case["root"]))
    else:

        def run() -> None:
            verify_consistency(case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), proof)

    if case["wantErr"]:
        with pytest.raises(ProofError):
            run()
    else:
        run()


# --- hashing -------------------------------------------------------------------------------------


def test_hashes_have_domain_separation() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root_from_leaf_hashes([LEAVES[0]]) == LEAVES[0]


def test_proof_error_is_an_integrity_error() -> None:
    assert issubclass(ProofError, IntegrityError)


# --- incremental tree against the reference --------------------------------------------------------


def test_append_stores_leaf_and_completed_parents() -> None:
    s = MemoryNodeStore()
    for n, h in enumerate(LEAVES):
        new = nodes_to_store_on_append(n, h, s.get)
        trailing_ones = (n ^ (n + 1)).bit_length() - 1
        assert len(new) == 1 + trailing_ones
        assert new[0] == (0, n, h)
        s.append_leaf_hash(h)
        for level, index, node in new:
            lo, hi = index << level, (index + 1) << level
            assert node == root_from_leaf_hashes(LEAVES[lo:hi])


def test_root_at_every_size(store70: MemoryNodeStore) -> None:
    assert root_at(0, store70.get) == EMPTY_ROOT
    for n in range(1, 71):
        assert root_at(n, store70.get) == root_from_leaf_hashes(LEAVES[:n])


def test_inclusion_proofs_all_sizes_and_indices(store70: MemoryNodeStore) -> None:
    for n in range(1, 71):
        root = root_from_leaf_hashes(LEAVES[:n])
        for i in range(n):
            proof = inclusion_proof(i, n, store70.get)
            assert proof == ref_path(i, LEAVES[:n])
            assert proof == store70.read(inclusion_proof_plan(i, n))
            verify_inclusion(i, n, LEAVES[i], proof, root)


def test_consistency_proofs_all_size_pairs(store70: MemoryNodeStore) -> None:
    for n in range(1, 71):
        root2 = root_from_leaf_hashes(LEAVES[:n])
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, store70.get)
            assert proof == ref_subproof(m, LEAVES[:n], True)
            assert proof == store70.read(consistency_proof_plan(m, n))
            verify_consistency(m, n, root_from_leaf_hashes(LEAVES[:m]), root2, proof)


def test_proofs_read_logarithmically_many_nodes() -> None:
    s = MemoryNodeStore()
    for i in range(3000):
        s.append(i.to_bytes(4, "big"))
    reads = 0

    def counting_get(level: int, index: int) -> bytes:
        nonlocal reads
        reads += 1
        return s.get(level, index)

    for n in (1, 2, 3, 1000, 1023, 1024, 1025, 2999, 3000):
        bound = 2 * n.bit_length() + 2
        for i in {0, n // 3, n // 2, n - 1}:
            reads = 0
            inclusion_proof(i, n, counting_get)
            assert reads <= bound
        for m in {1, n // 2 or 1, n - 1 or 1, n}:
            reads = 0
            consistency_proof(m, n, counting_get)
            assert reads <= bound
        reads = 0
        root_at(n, counting_get)
        assert reads <= n.bit_length()


def test_bad_arguments_to_proof_generation(store70: MemoryNodeStore) -> None:
    with pytest.raises(ValidationError):
        inclusion_proof(5, 5, store70.get)
    with pytest.raises(ValidationError):
        inclusion_proof(-1, 5, store70.get)
    with pytest.raises(ValidationError):
        consistency_proof(0, 5, store70.get)
    with pytest.raises(ValidationError):
        consistency_proof(6, 5, store70.get)
    with pytest.raises(ValidationError):
        merkle.assemble(inclusion_proof_plan(3, 9), [])


def test_verifier_refuses_malformed_inputs() -> None:
    root = root_from_leaf_hashes(LEAVES[:4])
    proof = ref_path(1, LEAVES[:4])
    verify_inclusion(1, 4, LEAVES[1], proof, root)
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(1, 4, LEAVES[1][:31], proof, root)
    with pytest.raises(ProofError, match=r"proof\[1\]"):
        verify_inclusion(1, 4, LEAVES[1], [proof[0], proof[1] + b"x"], root)
    with pytest.raises(ProofError, match="bytes"):
        verify_inclusion(1, 4, LEAVES[1], [proof[0], "x" * 32], root)  # type: ignore[list-item]
    with pytest.raises(ProofError, match="different root"):
        verify_inclusion(1, 4, LEAVES[2], proof, root)
    with pytest.raises(ProofError, match="never shrinks"):
        verify_consistency(4, 3, root, root, [])


# --- properties ----------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=260)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(sizes)
    return n, draw(st.integers(min_value=0, max_value=n - 1))


@pytest.fixture(scope="module")
def big_store() -> tuple[MemoryNodeStore, list[bytes]]:
    s = MemoryNodeStore()
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(260)]
    for h in leaves:
        s.append_leaf_hash(h)
    return s, leaves


@settings(max_examples=150, deadline=None)
@given(tree_and_index(), st.data())
def test_property_inclusion_tamper_detected(big_store, ni, data) -> None:  # type: ignore[no-untyped-def]
    s, leaves = big_store
    n, i = ni
    root = root_at(n, s.get)
    proof = inclusion_proof(i, n, s.get)
    verify_inclusion(i, n, leaves[i], proof, root)
    assert rfc_verify_inclusion(i, n, leaves[i], proof, root)
    # Flip one bit anywhere in the proof, or claim another index: both must fail.
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        bad[j] = (int.from_bytes(bad[j], "big") ^ (1 << bit)).to_bytes(32, "big")
        with pytest.raises(ProofError):
            verify_inclusion(i, n, leaves[i], bad, root)
        assert not rfc_verify_inclusion(i, n, leaves[i], bad, root)
    other = data.draw(st.integers(0, n))
    if other != i:
        with pytest.raises(ProofError):
            verify_inclusion(other, n, leaves[i], proof, root)


@settings(max_examples=200, deadline=None)
@given(
    tree_and_index(),
    st.lists(st.binary(min_size=32, max_size=32), max_size=12),
    st.binary(min_size=32, max_size=32),
)
def test_property_fast_verifier_matches_rfc_algorithm(ni, proof, leaf) -> None:  # type: ignore[no-untyped-def]
    n, i = ni
    # Random proofs essentially never verify; make the root what the RFC walk computes so that
    # acceptance is also exercised, then both verifiers must agree.
    _, r = rfc_walk(i, n, leaf, proof)
    expected = rfc_verify_inclusion(i, n, leaf, proof, r)
    try:
        verify_inclusion(i, n, leaf, proof, r)
        got = True
    except ProofError:
        got = False
    assert got == expected


@settings(max_examples=150, deadline=None)
@given(sizes, sizes, st.data())
def test_property_consistency(big_store, a, b, data) -> None:  # type: ignore[no-untyped-def]
    s, leaves = big_store
    m, n = min(a, b), max(a, b)
    r1, r2 = root_at(m, s.get), root_at(n, s.get)
    proof = consistency_proof(m, n, s.get)
    verify_consistency(m, n, r1, r2, proof)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        with pytest.raises(ProofError):
            verify_consistency(m, n, r1, r2, bad)
        with pytest.raises(ProofError):
            verify_consistency(m, n, r1, r2, proof[:-1])
        with pytest.raises(ProofError):
            verify_consistency(m, n, r1, r2, [*proof, proof[0]])
    if m < n:
        # A different old root (a fork) must not verify.
        with pytest.raises(ProofError):
            verify_consistency(m, n, leaf_hash(b"fork"), r2, proof)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=100))
def test_property_incremental_root_equals_reference(entries) -> None:  # type: ignore[no-untyped-def]
    s = MemoryNodeStore()
    for e in entries:
        s.append(e)
    assert s.root() == root_from_leaf_hashes([leaf_hash(e) for e in entries])
