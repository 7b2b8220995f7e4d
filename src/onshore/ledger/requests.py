"""Signed requests: the message form of every state-changing call between parties.

A signed request is ``{"party", "op", "body", "nonce", "expires", "sig"}``; ``sig`` is the party's
Ed25519 signature over the canonical JSON (RFC 8785) of the other five fields. It lives beside
ledger entries because a deployment's decision entries carry the request they answer, so an
auditor checks it offline (``attest/verify.py``) as the coordinator did online
(``parties/signed.py``, which adds expiry and nonce rules).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.ledger.entries import canonical_json

REQUEST_FIELDS = frozenset({"party", "op", "body", "nonce", "expires", "sig"})
DEFAULT_TTL_S = 120


def sign_request(party: str, op: str, body: dict[str, Any], key: Ed25519PrivateKey,
                 ttl_s: float = DEFAULT_TTL_S) -> dict[str, Any]:
    """A signed request by ``party`` with a fresh nonce, expiring ``ttl_s`` seconds from now."""
    msg = {"party": party, "op": op, "body": body, "nonce": secrets.token_hex(16), "expires": int(time.time() + ttl_s)}
    return {**msg, "sig": base64.b64encode(key.sign(canonical_json(msg))).decode()}


def request_shape_ok(req: Any) -> bool:
    """Whether ``req`` has exactly the fields of a signed request, a dict body and a sane nonce."""
    return (isinstance(req, dict) and set(req) == REQUEST_FIELDS and isinstance(req["body"], dict)
            and isinstance(req["nonce"], str) and 16 <= len(req["nonce"]) <= 64 and isinstance(req["sig"], str))


def request_signature_ok(req: dict[str, Any], key: Ed25519PublicKey) -> bool:
    """Whether ``req`` (of the right shape) is signed by ``key``; never raises on hostile input."""
    unsigned = {k: v for k, v in req.items() if k != "sig"}
    try:
        key.verify(base64.b64decode(req["sig"], validate=True), canonical_json(unsigned))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
