"""RFC 9162 Merkle tree: hashes, proofs, and an incremental tree over a node store.

Everything here is pure: no storage, no clock. The ledger's storage engine keeps the hash of every
complete subtree as node ``(level, index)`` (level 0 = leaves; node ``(level, i)`` covers leaves
``[i * 2**level, (i + 1) * 2**level)``) and hands these functions a ``get(level, index)`` callable.
Appends then store O(log n) nodes and proofs read O(log n) nodes, because every subtree that the
RFC's recursive definitions split a tree into is either complete (one stored node) or lies on the
tree's right edge (a fold over at most log2(n) stored nodes).

Sections cited are those of RFC 9162 (Certificate Transparency Version 2.0), which keeps the
RFC 6962 hashing: https://www.rfc-editor.org/rfc/rfc9162#section-2.1
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onshore.errors import IntegrityError, ValidationError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

GetNode = Callable[[int, int], bytes]
"""``get(level, index)`` returns the stored hash of the complete subtree node (level, index)."""

_sha256 = hashlib.sha256


class ProofError(IntegrityError):
    """An inclusion or consistency proof does not prove what it claims; the message says which."""


# --- hashing (RFC 9162 §2.1.1) -----------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Leaf hash ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1); the prefix keeps leaves and nodes apart."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node hash ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return _sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162 §2.1.1: the largest power of two smaller than ``n`` (``n > 1``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) from the leaf hashes, by the recursive definition of RFC 9162 §2.1.1.

    This is the reference the incremental functions are tested against; it is O(n).
    The empty tree's hash is SHA-256 of the empty string.
    """
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _largest_power_of_two_below(n)
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


# --- verification (RFC 9162 §2.1.3.2, §2.1.4.2) ------------------------------------------------


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ProofError(f"{what}[{i}] is not a {HASH_SIZE}-byte SHA-256 hash")


def verify_inclusion(leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the tree of ``tree_size`` with ``root``.

    Accepts and rejects exactly as the algorithm of RFC 9162 §2.1.3.2, with less work per level.
    The RFC's ``fn``/``sn`` walk first meets the levels below the point where the paths to
    ``leaf_index`` and to the last leaf part (``inner`` of them; the sibling is on the left when
    ``fn`` is odd), then levels on the right edge, where only left siblings occur and levels
    without a sibling are skipped (one per 1-bit of ``leaf_index`` above ``inner``). So the proof
    length is known up front, and one bit mask says on which side each proof hash goes.
    Raises :class:`ProofError` naming what failed.
    """
    if tree_size < 0 or leaf_index < 0 or leaf_index >= tree_size:
        raise ProofError(f"leaf index {leaf_index} is outside a tree of size {tree_size}")
    if not isinstance(leaf_hash, bytes | bytearray) or len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash is not a {HASH_SIZE}-byte SHA-256 hash")
    proof = proof or ()
    inner = (leaf_index ^ (tree_size - 1)).bit_length()
    border = (leaf_index >> inner).bit_count()
    if len(proof) != inner + border:
        raise ProofError(
            f"inclusion proof for leaf {leaf_index} of {tree_size} has {len(proof)} hashes, it needs {inner + border}"
        )
    if proof and set(map(len, proof)) != {HASH_SIZE}:
        _check_hashes("inclusion proof", proof)
    # Bit i set: proof[i] is a left sibling. Border levels are all left, hence the 1s above inner
    # (a negative int keeps shifting in 1s).
    left = (leaf_index & ((1 << inner) - 1)) | (-1 << inner)
    sha = _sha256
    r = bytes(leaf_hash)
    try:
        for p in proof:
            r = sha(b"\x01" + p + r).digest() if left & 1 else sha(b"\x01" + r + p).digest()
            left >>= 1
    except TypeError:
        # The length check lets a 32-character str through; refuse it here, off the fast path.
        raise ProofError("inclusion proof hashes must be bytes") from None
    if r != root:
        raise ProofError(f"inclusion proof for leaf {leaf_index} of {tree_size} leads to a different root hash")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with ``root1``.

    Implements RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal roots. A proof from
    the empty tree is refused: RFC 9162 defines consistency proofs for ``0 < size1`` only, and every
    tree extends the empty one, so such a "proof" would prove nothing. Raises :class:`ProofError`.
    """
    proof = list(proof or ())
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes must not be negative (got {size1} and {size2})")
    if size1 > size2:
        raise ProofError(f"tree size {size2} is smaller than {size1}: a log never shrinks")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless; size1 must be > 0")
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal ({size1}) so the consistency proof must be empty")
        if root1 != root2:
            raise ProofError(f"two different root hashes for the same tree size {size1}")
        return
    # Step 1.
    if not proof:
        raise ProofError(f"empty consistency proof from size {size1} to {size2}")
    _check_hashes("consistency proof", proof)
    # Step 2: when size1 is a power of two the old root is itself a node of the new tree.
    if size1 & (size1 - 1) == 0:
        proof = [bytes(root1), *proof]
    # Steps 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = proof[0]
    # Step 6.
    for c in proof[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {size1} to {size2} has too many hashes")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError(f"consistency proof from {size1} to {size2} is too short")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to the root hash given for size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to the root hash given for size {size2}")


# --- incremental tree over a node store --------------------------------------------------------


def nodes_to_store_on_append(tree_size: int, new_leaf_hash: bytes, get: GetNode) -> list[tuple[int, int, bytes]]:
    """Nodes to store when leaf number ``tree_size`` (0-based) is appended.

    Returns ``(level, index, hash)`` for the new leaf and for every subtree it completes: while
    the new node is a right child its left sibling is complete and stored, so their parent is now
    complete too. That is one node per trailing 1-bit of ``tree_size`` (RFC 9162 §2.1.1's
    definition restricted to complete subtrees), so at most log2(n) + 1 nodes and reads.
    """
    if tree_size < 0:
        raise ValidationError(f"tree size must not be negative, got {tree_size}")
    if len(new_leaf_hash) != HASH_SIZE:
        raise ValidationError(f"leaf hash must be {HASH_SIZE} bytes, got {len(new_leaf_hash)}")
    out = [(0, tree_size, bytes(new_leaf_hash))]
    level, index, h = 0, tree_size, bytes(new_leaf_hash)
    while index & 1:
        h = _sha256(b"\x01" + get(level, index - 1) + h).digest()
        level += 1
        index >>= 1
        out.append((level, index, h))
    return out


NodeId = tuple[int, int]
"""``(level, index)`` of a complete subtree node."""


@dataclass(slots=True)
class NodePlan:
    """The stored nodes a root or proof needs, in one batch, and how they combine.

    ``node_ids`` lists every read in order; output hash ``i`` is the next ``counts[i]`` of them
    folded right to left with :func:`node_hash` (a count of 1 is the node itself). A storage
    engine can fetch ``node_ids`` in one query and call :func:`assemble`.
    """

    node_ids: list[NodeId]
    counts: list[int]


def _range_ids(start: int, end: int, out: list[NodeId]) -> int:
    """Append the complete subtrees that make up leaves ``[start, end)``; return how many.

    Valid for the subtrees of the RFC 9162 §2.1.1 recursion: such a subtree starts at a multiple
    of the power of two at or above its size, so its leaves split into complete subtrees, one per
    set bit of ``end - start``, largest first.
    """
    size = end - start
    pos = start
    count = 0
    while size:
        level = size.bit_length() - 1
        out.append((level, pos >> level))
        pos += 1 << level
        size ^= 1 << level
        count += 1
    return count


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Combine complete subtrees left to right as the RFC recursion does: from the right."""
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = _sha256(b"\x01" + left + h).digest()
    return h


def assemble(plan: NodePlan, hashes: Sequence[bytes]) -> list[bytes]:
    """Turn the hashes read for ``plan.node_ids`` (same order) into the planned output hashes."""
    if len(hashes) != len(plan.node_ids):
        raise ValidationError(f"expected {len(plan.node_ids)} node hashes, got {len(hashes)}")
    out = list(hashes)
    if len(plan.counts) != len(out):
        # Fold from the end so that earlier positions stay valid.
        pos = len(out)
        for c in reversed(plan.counts):
            pos -= c
            if c > 1:
                out[pos : pos + c] = [_fold(out[pos : pos + c])]
    return out


def _read(plan: NodePlan, get: GetNode) -> list[bytes]:
    return assemble(plan, [get(level, index) for level, index in plan.node_ids])


def root_plan(tree_size: int) -> NodePlan:
    """Nodes for MTH(D[tree_size]) (RFC 9162 §2.1.1): the complete subtrees on the right edge."""
    if tree_size < 0:
        raise ValidationError(f"tree size must not be negative, got {tree_size}")
    ids: list[NodeId] = []
    count = _range_ids(0, tree_size, ids)
    return NodePlan(ids, [count] if count else [])


def root_at(tree_size: int, get: GetNode) -> bytes:
    """MTH(D[tree_size]) (RFC 9162 §2.1.1) from the O(log n) complete subtrees on the right edge.

    The empty tree's hash is SHA-256 of the empty string.
    """
    plan = root_plan(tree_size)
    return _read(plan, get)[0] if plan.counts else EMPTY_ROOT


def inclusion_proof_plan(index: int, tree_size: int) -> NodePlan:
    """Nodes for PATH(index, D[tree_size]) of RFC 9162 §2.1.3.1, leaf-side sibling first.

    Unrolls the RFC recursion by levels. Below the level where the paths to ``index`` and to the
    last leaf part, every sibling is a complete subtree (one node); at that level the sibling is
    the tree's right edge, possibly incomplete, and is folded from complete ones. Above it the
    path runs along the right edge, where a (complete) left sibling exists exactly where
    ``index`` has a 1-bit and a level without a sibling is skipped. At most 2 * log2(n) nodes.
    """
    if not 0 <= index < tree_size:
        raise ValidationError(f"leaf index {index} is not in a tree of size {tree_size}")
    inner = (index ^ (tree_size - 1)).bit_length()
    ids: list[NodeId] = [(level, (index >> level) ^ 1) for level in range(inner - 1)]
    counts = [1] * len(ids)
    if inner:
        counts.append(_range_ids(((index >> (inner - 1)) | 1) << (inner - 1), tree_size, ids))
    # Visit only the 1-bits above ``inner``: a 0-bit is a level where the node has no sibling.
    high = index >> inner << inner
    while high:
        level = (high & -high).bit_length() - 1
        ids.append((level, (index >> level) - 1))
        counts.append(1)
        high &= high - 1
    return NodePlan(ids, counts)


def inclusion_proof(index: int, tree_size: int, get: GetNode) -> list[bytes]:
    """PATH(index, D[tree_size]) of RFC 9162 §2.1.3.1 read through ``get``; see the plan."""
    return _read(inclusion_proof_plan(index, tree_size), get)


def consistency_proof_plan(size1: int, size2: int) -> NodePlan:
    """Nodes for PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1, deepest node first.

    Follows SUBPROOF(m, D[n], b) iteratively from the root: when the old tree fits in the left
    half (m <= k) the right half is proof material and ``b`` stays true; otherwise the complete
    left half is, and ``b`` turns false. At the end, SUBPROOF(m, D[m], false) adds MTH(D[m])
    because the verifier cannot know that subtree's hash. Defined for ``0 < size1 <= size2``;
    equal sizes give the empty proof.
    """
    if not 0 < size1 <= size2:
        raise ValidationError(f"a consistency proof needs 0 < size1 <= size2 (got size1={size1}, size2={size2})")
    ids: list[NodeId] = []
    counts: list[int] = []
    lo, n, m, complete = 0, size2, size1, True
    while m != n:
        k = _largest_power_of_two_below(n)
        if m <= k:
            counts.append(_range_ids(lo + k, lo + n, ids))
            n = k
        else:
            level = k.bit_length() - 1
            ids.append((level, lo >> level))
            counts.append(1)
            lo += k
            m -= k
            n -= k
            complete = False
    if not complete:
        counts.append(_range_ids(lo, lo + n, ids))
    # The recursion emits the top of the tree first; the RFC proof lists it last.
    ordered_ids: list[NodeId] = []
    pos = len(ids)
    for c in reversed(counts):
        ordered_ids.extend(ids[pos - c : pos])
        pos -= c
    return NodePlan(ordered_ids, counts[::-1])


def consistency_proof(size1: int, size2: int, get: GetNode) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1 read through ``get``; see the plan."""
    return _read(consistency_proof_plan(size1, size2), get)


class MemoryNodeStore:
    """An in-memory node store for tests and benchmarks; the ledger stores nodes in SQL.

    Nodes live in one list per level: the tree is append-only, so node (level, i) is always
    appended as the i-th of its level, and a list index is cheaper than a dict lookup.
    """

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = []
        self.size = 0

    def get(self, level: int, index: int) -> bytes:
        """The stored hash of node (level, index); IndexError if it is not a complete subtree."""
        return self.levels[level][index]

    def read(self, plan: NodePlan) -> list[bytes]:
        """Fetch a plan's nodes in one batch (as a SQL engine would) and assemble them."""
        levels = self.levels
        return assemble(plan, [levels[level][index] for level, index in plan.node_ids])

    def append(self, data: bytes) -> int:
        """Append one entry (its leaf hash is computed here); returns its leaf index."""
        return self.append_leaf_hash(leaf_hash(data))

    def append_leaf_hash(self, h: bytes) -> int:
        """Append a leaf by its hash; returns its leaf index."""
        levels = self.levels
        for level, index, node in nodes_to_store_on_append(self.size, h, self.get):
            if level == len(levels):
                levels.append([])
            assert index == len(levels[level]), "nodes are appended in order"
            levels[level].append(node)
        self.size += 1
        return self.size - 1

    def root(self, tree_size: int | None = None) -> bytes:
        """MTH at ``tree_size`` (default: the current size)."""
        return root_at(self.size if tree_size is None else tree_size, self.get)
