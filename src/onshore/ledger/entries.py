"""Ledger entries: canonical JSON (RFC 8785), each signed (Ed25519) by the acting site, member or log.

The Merkle leaf is the canonical JSON of the signed entry, so a leaf carries its own signature and
an auditor holding only the leaf and the actor's public key can check it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.errors import IntegrityError

VERSION = 1

#: Entry kinds by family (DESIGN.md "Ledger"); the family is the part before the dot.
KINDS = {
    "governance": ("workspace.init", "site.add", "member.add", "embodiment.add", "key.create"),
    "consent": ("consent.grant", "consent.withdraw"),
    "data": ("data.ingest", "data.copy", "data.export", "data.read", "key.release", "key.shred"),
    "decision": ("decision",),
    "job": ("job.start", "job.end", "job.checkpoint"),
    "model": ("model.release", "model.attest", "model.taint", "model.serve"),
}
ALL_KINDS = frozenset(k for ks in KINDS.values() for k in ks)


class EntrySignatureError(IntegrityError):
    """An entry's signature does not verify under its actor's public key."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    """One signed ledger entry. ``actor`` is "site:NAME", "member:NAME" or "log"."""

    kind: str
    actor: str
    time: str
    body: dict[str, Any]
    sig: str  # base64 Ed25519 signature over ``signed_bytes()``

    def unsigned(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": self.kind, "actor": self.actor, "time": self.time, "body": self.body}

    def signed_bytes(self) -> bytes:
        return rfc8785.dumps(self.unsigned())

    def leaf(self) -> bytes:
        """The Merkle leaf data: canonical JSON of the entry with its signature."""
        return rfc8785.dumps({**self.unsigned(), "sig": self.sig})

    def to_json(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.sig}


def sign_entry(kind: str, actor: str, body: dict[str, Any], key: Ed25519PrivateKey,
               time: str | None = None) -> Entry:
    """Make a signed entry. Refuses unknown kinds so that the log stays interpretable."""
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    unsigned = Entry(kind, actor, time or now_iso(), body, "")
    sig = key.sign(unsigned.signed_bytes())
    return Entry(kind, actor, unsigned.time, body, base64.b64encode(sig).decode())


def parse_leaf(leaf: bytes) -> Entry:
    """Parse leaf bytes back into an Entry; refuses non-canonical or malformed leaves."""
    try:
        d = json.loads(leaf)
        entry = Entry(d["kind"], d["actor"], d["time"], d["body"], d["sig"])
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"ledger leaf is not a valid entry: {e}") from None
    if d.get("v") != VERSION or set(d) != {"v", "kind", "actor", "time", "body", "sig"}:
        raise IntegrityError("ledger leaf has an unknown version or extra fields")
    if entry.leaf() != leaf:
        raise IntegrityError("ledger leaf is not in canonical JSON form (RFC 8785)")
    return entry


def verify_entry(entry: Entry, key: Ed25519PublicKey) -> None:
    """Raise EntrySignatureError unless ``entry.sig`` is ``key``'s signature of the entry."""
    try:
        key.verify(base64.b64decode(entry.sig, validate=True), entry.signed_bytes())
    except (InvalidSignature, ValueError):
        raise EntrySignatureError(
            f"signature of {entry.kind} entry by {entry.actor} at {entry.time} does not verify"
        ) from None
