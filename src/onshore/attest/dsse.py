"""DSSE v1, the Dead Simple Signing Envelope (https://github.com/secure-systems-lab/dsse).

A signature covers PAE(payloadType, payload), never the JSON around it, so the envelope can be
re-serialised freely. Keys are Ed25519. The envelope's JSON form is
``{"payload": b64, "payloadType": str, "signatures": [{"keyid": str, "sig": b64}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.encoding import b64decode_canonical, b64encode
from onshore.errors import ValidationError

# One error class for every failed signature check, notes and envelopes alike, so that callers
# (the offline verifier) catch one thing. Re-exported here for DSSE users.
from onshore.ledger.notes import SignatureError

__all__ = [
    "EnvelopeError",
    "SignatureError",
    "pae",
    "sign_envelope",
    "add_signature",
    "parse_envelope",
    "verify_envelope",
]

_ENVELOPE_FIELDS = {"payload", "payloadType", "signatures"}
_SIGNATURE_FIELDS = {"keyid", "sig"}


class EnvelopeError(ValidationError):
    """The envelope is not well-formed DSSE; the message names the field."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding (DSSE protocol, "Signature definition").

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` with lengths as ASCII decimal byte
    counts; the lengths make the encoding unambiguous without escaping.
    """
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def _unb64(text: Any, what: str) -> bytes:
    # DSSE accepts standard or URL-safe base64; we accept only the canonical standard form we
    # emit, so that an envelope has one spelling.
    try:
        return b64decode_canonical(text, what)
    except ValueError as e:
        raise EnvelopeError(str(e)) from None


def sign_envelope(payload: bytes, payload_type: str, key: Ed25519PrivateKey, keyid: str) -> dict[str, Any]:
    """Sign ``payload`` with Ed25519 over PAE and return the JSON-ready envelope (one signature)."""
    if not isinstance(payload, bytes):
        raise EnvelopeError("payload must be bytes")
    if not payload_type:
        raise EnvelopeError("payloadType must not be empty")
    sig = key.sign(pae(payload_type, payload))
    return {
        "payload": b64encode(payload),
        "payloadType": payload_type,
        "signatures": [{"keyid": keyid, "sig": b64encode(sig)}],
    }


def add_signature(envelope: dict[str, Any], key: Ed25519PrivateKey, keyid: str) -> dict[str, Any]:
    """Return a copy of ``envelope`` with one more signature (e.g. a second site's)."""
    payload, payload_type, sigs = _parse(envelope)
    sig = key.sign(pae(payload_type, payload))
    return {
        "payload": envelope["payload"],
        "payloadType": payload_type,
        "signatures": [*({"keyid": k, "sig": b64encode(s)} for k, s in sigs), {"keyid": keyid, "sig": b64encode(sig)}],
    }


def _parse(envelope: Any) -> tuple[bytes, str, list[tuple[str, bytes]]]:
    if not isinstance(envelope, dict):
        raise EnvelopeError("a DSSE envelope is a JSON object")
    extra = set(envelope) - _ENVELOPE_FIELDS
    missing = _ENVELOPE_FIELDS - set(envelope)
    if missing:
        raise EnvelopeError(f"DSSE envelope lacks {', '.join(sorted(missing))}")
    if extra:
        raise EnvelopeError(f"DSSE envelope has unexpected fields {', '.join(sorted(extra))}")
    payload = _unb64(envelope["payload"], "payload")
    payload_type = envelope["payloadType"]
    if not isinstance(payload_type, str) or not payload_type:
        raise EnvelopeError("payloadType must be a non-empty string")
    raw_sigs = envelope["signatures"]
    if not isinstance(raw_sigs, list) or not raw_sigs:
        raise EnvelopeError("signatures must be a non-empty list")
    sigs = []
    for i, s in enumerate(raw_sigs):
        # Unknown fields are refused: a mangled "keyid" must not turn into "no keyid, try all keys".
        if not isinstance(s, dict) or "sig" not in s or set(s) - _SIGNATURE_FIELDS:
            raise EnvelopeError(f"signatures[{i}] must be an object with sig and optional keyid")
        keyid = s.get("keyid", "")
        if not isinstance(keyid, str):
            raise EnvelopeError(f"signatures[{i}].keyid must be a string")
        sigs.append((keyid, _unb64(s["sig"], f"signatures[{i}].sig")))
    return payload, payload_type, sigs


def parse_envelope(data: bytes | str) -> dict[str, Any]:
    """Read an envelope from JSON text, refusing malformed JSON or a malformed envelope."""
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise EnvelopeError(f"DSSE envelope is not valid JSON: {e}") from None
    _parse(envelope)
    return envelope


def verify_envelope(
    envelope: dict[str, Any],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    payload_type: str | None = None,
    threshold: int = 1,
) -> bytes:
    """Verify a DSSE envelope and return its payload (DSSE protocol, "Verification").

    A signature counts when its keyid names a trusted key and it verifies over PAE; signatures
    with unknown keyids are ignored; a signature naming a trusted key that fails rejects the
    envelope, since it means tampering. ``threshold`` distinct trusted keys must have signed.
    When ``payload_type`` is given the envelope must carry it.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    payload, ptype, sigs = _parse(envelope)
    if payload_type is not None and ptype != payload_type:
        raise EnvelopeError(f"payloadType is {ptype!r}, expected {payload_type!r}")
    message = pae(ptype, payload)
    good: set[str] = set()
    for keyid, sig in sigs:
        key = public_keys.get(keyid)
        if key is None:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            raise SignatureError(f"DSSE signature by key {keyid!r} does not verify; the envelope was altered") from None
        good.add(keyid)
    if len(good) < threshold:
        trusted = ", ".join(sorted(public_keys)) or "none"
        raise SignatureError(
            f"DSSE envelope has {len(good)} valid signature(s) from trusted keys, needs {threshold}"
            f" (trusted keyids: {trusted})"
        )
    return payload
