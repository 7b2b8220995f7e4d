"""An auditor's offline check of what a deployment's coordinator served: a checkpoint and the
ledger's entries, verified with the trust root alone (public keys; no network, no kit)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onshore.errors import IntegrityError, ValidationError
from onshore.keys.keystore import public_key_from_b64
from onshore.ledger import merkle
from onshore.ledger.checkpoint import verify_checkpoint, verify_cosignatures
from onshore.ledger.entries import parse_leaf, verify_entry
from onshore.ledger.notes import NoteError, SignatureError, encode_verifier_key


@dataclass(frozen=True)
class LedgerAudit:
    size: int
    kinds: dict[str, int]   # entry kind -> count
    actors: dict[str, int]  # actor -> count
    witnesses: tuple[str, ...] = ()  # the trust root's witnesses whose cosignatures verified


def load_trust_root(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(d, dict) or not {"consortium", "log_key", "sites", "members"} <= set(d):
            raise ValueError("fields consortium, log_key, sites, members")
        return d
    except (OSError, ValueError) as e:
        raise ValidationError(f"{path}: not a trust root ({e}); use trust-root.json from 'onshore provision'") from None


def verify_ledger(note: str, leaves: list[bytes], trust: dict[str, Any]) -> LedgerAudit:
    """Check the log key's signature on ``note``, that ``leaves`` (the first checkpoint-size of
    them) hash to its root, and every entry's signature against its actor's key in ``trust``.
    Raises IntegrityError naming the first thing that does not hold."""
    origin = f"onshore/{trust['consortium']}"
    try:
        cp = verify_checkpoint(note, encode_verifier_key(origin, public_key_from_b64(trust["log_key"])), origin)
    except (NoteError, SignatureError) as e:
        raise IntegrityError(f"the checkpoint does not verify with the trust root's log key: {e}") from None
    if len(leaves) < cp.size:
        raise IntegrityError(f"the checkpoint covers {cp.size} entries but only {len(leaves)} were given")
    leaves = leaves[:cp.size]
    if merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves]) != cp.root_hash:
        raise IntegrityError("the entries do not hash to the checkpoint's root: the ledger was edited")
    keys = {f"site:{k}": v for k, v in trust["sites"].items()} | {f"member:{k}": v for k, v in trust["members"].items()}
    keys["log"] = trust["log_key"]
    kinds: Counter[str] = Counter()
    actors: Counter[str] = Counter()
    for i, leaf in enumerate(leaves):
        e = parse_leaf(leaf)
        if e.actor not in keys:
            raise IntegrityError(f"entry {i} is by {e.actor}, whom the trust root does not name")
        verify_entry(e, public_key_from_b64(keys[e.actor]))
        kinds[e.kind] += 1
        actors[e.actor] += 1
    cosigned = verify_cosignatures(note, list(trust.get("witnesses", {}).values())) if trust.get("witnesses") else []
    return LedgerAudit(cp.size, dict(kinds), dict(actors), tuple(cosigned))
