"""Signed requests and signed decisions: what every state-changing message between parties is.

A **signed request** is ``{"party", "op", "body", "nonce", "expires", "sig"}``: ``sig`` is the
party's Ed25519 signature over the canonical JSON (RFC 8785) of the other fields. A receiver
checks the signature against the party's registered key, that ``expires`` (Unix seconds) is in
the future and at most ``MAX_TTL_S`` away, and that it never saw ``nonce`` before (a
:class:`NonceBook` in its own database): a replayed or edited request is refused.

A **decision** is a signed request by the coordinator (op ``decision``) whose body binds the
policy decision point's answer to (principal, site, action, dataset) and to the nonce of the
request it answers, with its own expiry; a site acts only on one that names itself.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Column, Connection, Engine, Float, MetaData, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from onshore.errors import OnshoreError, ValidationError
from onshore.ledger.entries import Entry
from onshore.ledger.requests import DEFAULT_TTL_S, request_shape_ok, request_signature_ok, sign_request
from onshore.residency.policy import UsagePolicy, cedar_hash, dataset_cedar

__all__ = ["DEFAULT_TTL_S", "MAX_TTL_S", "NonceBook", "PresignedKey", "RequestRefused", "StaleLinks", "check_decision",
           "check_signed", "consent_body", "entry_from_json", "sign_request"]

MAX_TTL_S = 300


class RequestRefused(OnshoreError):
    """A signed request or decision that does not verify, has expired, or was seen before."""


def check_signed(req: Any, key_for: Any, op: str | None = None, fresh: bool = True) -> dict[str, Any]:
    """Verify ``req`` (signature by its party's key from ``key_for(party)``, shape, ``op`` and,
    when ``fresh``, expiry). Returns the request; refuses (RequestRefused) anything else. Does not
    check the nonce. ``fresh=False`` is for a record kept after its request was accepted (the
    owner's consent, carried in every decision about its dataset)."""
    if not request_shape_ok(req):
        raise RequestRefused("not a signed request (fields party, op, body, nonce, expires, sig; a body object "
                             "and a nonce of 16-64 characters)")
    if op is not None and req["op"] != op:
        raise RequestRefused(f"signed request is for {req['op']!r}, not {op!r}")
    key: Ed25519PublicKey | None = key_for(req["party"]) if isinstance(req["party"], str) else None
    if key is None:
        raise RequestRefused(f"unknown party {req['party']!r}: not registered in this consortium")
    if not request_signature_ok(req, key):
        raise RequestRefused(f"signature of the {req['op']!r} request by {req['party']} does not verify")
    now = time.time()
    if not fresh:
        return req
    if isinstance(req["expires"], bool) or not isinstance(req["expires"], int) or req["expires"] < now:
        raise RequestRefused(f"the {req['op']!r} request by {req['party']} has expired; make a new one")
    if req["expires"] > now + MAX_TTL_S + 5:
        raise RequestRefused(f"the {req['op']!r} request expires too far ahead (at most {MAX_TTL_S} s)")
    return req


#: Seconds between two sweeps of expired nonces by ``NonceBook.use_in``.
SWEEP_S = 10.0

nonce_metadata = MetaData()
nonces = Table("party_nonces", nonce_metadata, Column("nonce", String(64), primary_key=True),
               Column("party", String(200), nullable=False), Column("expires", Float, nullable=False))


class NonceBook:
    """The nonces a party has accepted, in its own database: each is accepted once."""

    def __init__(self, engine: Engine) -> None:
        nonce_metadata.create_all(engine)
        self.engine = engine
        self._swept_at = 0.0

    def use(self, req: dict[str, Any]) -> None:
        """Record ``req``'s nonce; refuses (RequestRefused) one seen before. Forgets expired ones."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(nonces).where(nonces.c.expires < time.time() - 60))
                conn.execute(insert(nonces).values(nonce=req["nonce"], party=req["party"], expires=req["expires"]))
        except SQLIntegrityError:
            raise _replayed(req) from None

    def use_in(self, conn: Connection, req: dict[str, Any]) -> None:
        """Record ``req``'s nonce inside ``conn``'s open write transaction on this book's database
        (the coordinator's decision append, as a ``Ledger.append`` hook), so that the nonce and
        the entry it paid for commit together or not at all. Refuses (RequestRefused) a nonce seen
        before; the caller's transaction must then roll back. Forgets expired nonces at most every
        ``SWEEP_S`` seconds (one DELETE per decision cost more than the insert)."""
        cur = conn.connection.dbapi_connection.cursor()  # the hot path: the driver, not SQLAlchemy
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        now = time.time()
        if now - self._swept_at > SWEEP_S:
            cur.execute(f"DELETE FROM {nonces.name} WHERE expires < {mark}", (now - 60,))
            self._swept_at = now
        try:
            cur.execute(f"INSERT INTO {nonces.name} (nonce, party, expires) VALUES ({mark}, {mark}, {mark})",
                        (req["nonce"], req["party"], req["expires"]))
        except conn.dialect.loaded_dbapi.IntegrityError:
            raise _replayed(req) from None


def _replayed(req: dict[str, Any]) -> RequestRefused:
    return RequestRefused(f"replayed request: nonce {req['nonce']} by {req['party']} was used before")


def check_decision(decision: Any, coordinator_key: Ed25519PublicKey, *, site: str, action: str,
                   dataset: str, principal: str, nonce: str) -> dict[str, Any]:
    """The decision's body, if it is signed by the coordinator, unexpired, allows, and is bound to
    exactly this site, action, dataset, principal and request nonce; else RequestRefused."""
    d = check_signed(decision, lambda p: coordinator_key if p == "coordinator" else None, "decision")["body"]
    want = {"site": site, "action": action, "dataset": dataset, "principal": principal, "request_nonce": nonce}
    for k, v in want.items():
        if d.get(k) != v:
            raise RequestRefused(f"the decision is bound to {k} {d.get(k)!r}, not {v!r}: refused")
    if d.get("decision") != "allow":
        raise RequestRefused(f"the coordinator's decision denies this ({', '.join(d.get('rules', []))})")
    return d


class PresignedKey:
    """Stands in for a party's private key inside ``Ledger.append``: the party signed the entry
    (with its links to the subject's previous entry) on its own machine; ``sign`` hands back that
    signature only for exactly those bytes. Other bytes (another party appended about the subject
    meanwhile, so the links moved) raise StaleLinks and nothing is appended."""

    def __init__(self, entry: Entry) -> None:
        self._bytes = entry.signed_bytes()
        self._sig = base64.b64decode(entry.sig)

    def sign(self, data: bytes) -> bytes:
        if data != self._bytes:
            raise StaleLinks("the entry's links no longer name the newest entry about its subject; sign it again")
        return self._sig


class StaleLinks(RequestRefused):
    """A presigned entry whose links another append has overtaken."""


def entry_from_json(d: Any) -> Entry:
    """An Entry from its JSON form (``Entry.to_json``); refuses a malformed one."""
    try:
        if not isinstance(d, dict) or set(d) - {"links"} != {"v", "kind", "actor", "time", "body", "sig"}:
            raise ValueError("fields")
        return Entry(d["kind"], d["actor"], d["time"], d["body"], d["sig"], links=d.get("links"))
    except (KeyError, TypeError, ValueError):
        raise ValidationError("not a ledger entry (fields v, kind, actor, time, body, sig, links)") from None


def consent_body(dataset: str, owner: str, policy: UsagePolicy) -> dict[str, Any]:
    """The body of a member's consent.grant entry: what the embedded default records, so that a
    deployment's bundles verify as the embedded default's do."""
    return {"dataset": dataset, "owner": owner, "policy": policy.to_json(), "policy_hash": policy.hash,
            "cedar_hash": cedar_hash(dataset_cedar(dataset, owner, policy, withdrawn=False))}
