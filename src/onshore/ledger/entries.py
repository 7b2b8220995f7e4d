"""Ledger entries: canonical JSON (RFC 8785), each signed (Ed25519) by the acting site, member or log.

The Merkle leaf is the canonical JSON of the signed entry, so a leaf carries its own signature and
an auditor holding only the leaf and the actor's public key can check it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.errors import IntegrityError

VERSION = 1

#: Entry kinds by family (DESIGN.md "Ledger"); the family is the part before the dot.
KINDS = {
    "governance": ("workspace.init", "site.add", "member.add", "embodiment.add", "key.create",
                   "site.custody"),
    "consent": ("consent.grant", "consent.withdraw"),
    "data": ("data.ingest", "data.copy", "data.export", "data.read", "key.release", "key.shred", "data.attest",
             "data.abandoned"),
    "decision": ("decision",),
    "job": ("job.start", "job.end", "job.checkpoint", "job.abandoned"),
    "model": ("model.release", "model.copy", "model.export", "model.eval", "model.use", "model.attest", "model.taint",
              "model.serve", "model.alias", "model.archive", "model.annotate"),
    "token": ("token.issue", "token.revoke"),
    "dashboard": ("dashboard.token",),
}
ALL_KINDS = frozenset(k for ks in KINDS.values() for k in ks)


_SAFE_INT = 2**53


def _bmp(text: str) -> bool:
    return text.isascii() or all(ord(c) < 0xD800 for c in text)


def _plain(obj: Any) -> bool:
    """True when ``obj`` holds only values whose RFC 8785 form equals Python's sorted compact JSON.

    That is: strings and keys within the Basic Multilingual Plane below the surrogates (JCS sorts
    keys by UTF-16 code units, Python by code points; they agree there), booleans, None, and
    integers that are exact doubles. Floats go to the reference implementation (JCS formats them
    as ECMAScript does). Iterative, since it runs on every ledger append.
    """
    stack = [obj]
    while stack:
        o = stack.pop()
        t = type(o)
        if t is str:
            if not _bmp(o):
                return False
        elif t is dict:
            for k, v in o.items():
                if type(k) is not str or not _bmp(k):
                    return False
                stack.append(v)
        elif t is list or t is tuple:
            stack.extend(o)
        elif t is int:
            if not -_SAFE_INT < o < _SAFE_INT:
                return False
        elif o is not None and t is not bool:
            return False
    return True


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON. Plain data takes a fast path (same bytes; tested against rfc8785)."""
    if _plain(obj):
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return rfc8785.dumps(obj)


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
    # the leaf bytes when already known (set by sign_entry); not part of the entry's identity
    cached_leaf: bytes | None = field(default=None, compare=False, repr=False)
    # subject -> the previous entry about that subject ({"index", "leaf_hash"}) or None for the
    # first; set by the ledger inside its append transaction (onshore.ledger.subjects). None (no
    # field at all) for entries about no subject and for entries written before links existed.
    links: dict[str, dict[str, Any] | None] | None = None

    def unsigned(self) -> dict[str, Any]:
        d = {"v": VERSION, "kind": self.kind, "actor": self.actor, "time": self.time, "body": self.body}
        if self.links is not None:
            d["links"] = self.links
        return d

    def signed_bytes(self) -> bytes:
        return canonical_json(self.unsigned())

    def leaf(self) -> bytes:
        """The Merkle leaf data: canonical JSON of the entry with its signature."""
        if self.cached_leaf is not None:
            return self.cached_leaf
        return canonical_json({**self.unsigned(), "sig": self.sig})

    def to_json(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.sig}


def sign_entry(kind: str, actor: str, body: dict[str, Any], key: Ed25519PrivateKey,
               time: str | None = None, links: dict[str, dict[str, Any] | None] | None = None) -> Entry:
    """Make a signed entry. Refuses unknown kinds so that the log stays interpretable.

    ``links`` is for the ledger's append transaction only (see onshore.ledger.subjects).
    """
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    time = time or now_iso()
    unsigned: dict[str, Any] = {"v": VERSION, "kind": kind, "actor": actor, "time": time, "body": body}
    if links is not None:
        unsigned["links"] = links
    signed = canonical_json(unsigned)
    sig = base64.b64encode(key.sign(signed))
    # The leaf is the same canonical object plus "sig", which sorts just before the top-level
    # "time" key (the last key but "v"; "links" sorts before "sig"), so it is spliced in rather
    # than serialised again.
    cut = signed.rindex(b',"time":')
    leaf = b"".join((signed[:cut], b',"sig":"', sig, b'"', signed[cut:]))
    return Entry(kind, actor, time, body, sig.decode(), leaf, links)


@dataclass(frozen=True)
class Draft:
    """An entry to be signed by the ledger inside its append transaction, once its links are known.

    Entries about a subject (a dataset, a model) must be appended as drafts: their link to the
    previous entry about the subject is part of what is signed, and only the append transaction
    knows it (two writers must never claim the same predecessor).
    """

    kind: str
    actor: str
    body: dict[str, Any]
    key: Ed25519PrivateKey = field(repr=False)
    time: str | None = None


def parse_leaf(leaf: bytes) -> Entry:
    """Parse leaf bytes back into an Entry; refuses non-canonical or malformed leaves."""
    try:
        d = json.loads(leaf)
        entry = Entry(d["kind"], d["actor"], d["time"], d["body"], d["sig"], links=d.get("links"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"ledger leaf is not a valid entry: {e}") from None
    if d.get("v") != VERSION or set(d) - {"links"} != {"v", "kind", "actor", "time", "body", "sig"}:
        raise IntegrityError("ledger leaf has an unknown version or extra fields")
    if "links" in d and not isinstance(d["links"], dict):
        raise IntegrityError("ledger leaf's links must be an object")
    try:
        canonical = entry.leaf()
    except rfc8785.CanonicalizationError as e:
        raise IntegrityError(f"ledger leaf holds a value RFC 8785 cannot represent: {e}") from None
    if canonical != leaf:
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
