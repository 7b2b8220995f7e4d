"""An auditor's offline check of what a deployment's coordinator served: a checkpoint and the
ledger's entries, verified with the trust root alone (public keys; no network, no kit)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from onshore.attest.trust import TrustRoot
from onshore.errors import IntegrityError
from onshore.ledger import merkle
from onshore.ledger.checkpoint import verify_checkpoint, verify_cosignatures
from onshore.ledger.entries import parse_leaf, verify_entry
from onshore.ledger.notes import NoteError, SignatureError


@dataclass(frozen=True)
class LedgerAudit:
    size: int
    kinds: dict[str, int]   # entry kind -> count
    actors: dict[str, int]  # actor -> count
    witnesses: tuple[str, ...] = ()  # the trust root's witnesses whose cosignatures verified


def load_trust_root(path: Path) -> TrustRoot:
    """The trust root 'onshore provision' wrote (the embedded default's format: attest/trust.py)."""
    return TrustRoot.load(path)


def verify_ledger(note: str, leaves: list[bytes], trust: TrustRoot) -> LedgerAudit:
    """Check the log key's signature on ``note``, that ``leaves`` (the first checkpoint-size of
    them) hash to its root, and every entry's signature against its actor's key in ``trust``.
    Raises IntegrityError naming the first thing that does not hold."""
    try:
        cp = verify_checkpoint(note, trust.log_vkey, trust.log_origin)
    except (NoteError, SignatureError) as e:
        raise IntegrityError(f"the checkpoint does not verify with the trust root's log key: {e}") from None
    if len(leaves) < cp.size:
        raise IntegrityError(f"the checkpoint covers {cp.size} entries but only {len(leaves)} were given")
    leaves = leaves[:cp.size]
    if merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves]) != cp.root_hash:
        raise IntegrityError("the entries do not hash to the checkpoint's root: the ledger was edited")
    kinds: Counter[str] = Counter()
    actors: Counter[str] = Counter()
    for i, leaf in enumerate(leaves):
        e = parse_leaf(leaf)
        key = trust.key_for(e.actor)
        if key is None:
            raise IntegrityError(f"entry {i} is by {e.actor}, whom the trust root does not name")
        verify_entry(e, key)
        kinds[e.kind] += 1
        actors[e.actor] += 1
    cosigned = verify_cosignatures(note, [w.vkey for w in trust.witnesses]) if trust.witnesses else []
    return LedgerAudit(cp.size, dict(kinds), dict(actors), tuple(cosigned))
