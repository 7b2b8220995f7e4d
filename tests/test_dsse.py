"""DSSE envelopes and in-toto Statements, with interop against securesystemslib's DSSE."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from onshore.attest import dsse, statement
from onshore.attest.dsse import EnvelopeError, SignatureError, pae, sign_envelope, verify_envelope
from onshore.attest.statement import PAYLOAD_TYPE, StatementError, Subject
from onshore.errors import IntegrityError, ValidationError

KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
OTHER = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
SSL_KEY = SSlibKey.from_crypto(KEY.public_key())
KEYID = SSL_KEY.keyid
KEYS = {KEYID: KEY.public_key()}

DIGEST = hashlib.sha256(b"model.safetensors bytes").hexdigest()
STATEMENT = statement.build_statement(
    [Subject("model.safetensors", DIGEST)],
    "https://onshore.dev/residency/v1",
    {"site": "sakai-1", "jurisdiction": "JP", "ledger_indices": [3, 17]},
)


def test_pae_matches_spec_example() -> None:
    # The worked example in the DSSE protocol description.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_round_trip() -> None:
    env = sign_envelope(b"hello", "text/plain", KEY, KEYID)
    assert set(env) == {"payload", "payloadType", "signatures"}
    assert verify_envelope(env, KEYS) == b"hello"
    assert verify_envelope(json.loads(json.dumps(env)), KEYS, payload_type="text/plain") == b"hello"
    with pytest.raises(EnvelopeError, match="payloadType"):
        verify_envelope(env, KEYS, payload_type=PAYLOAD_TYPE)


def test_our_envelope_verifies_with_securesystemslib() -> None:
    env = statement.sign_statement(STATEMENT, KEY, KEYID)
    theirs = Envelope.from_dict(copy.deepcopy(env))
    assert theirs.payload_type == PAYLOAD_TYPE
    assert theirs.pae() == pae(env["payloadType"], STATEMENT.to_bytes())
    accepted = theirs.verify([SSL_KEY], 1)
    assert list(accepted) == [KEYID]
    # And securesystemslib refuses what we would refuse.
    bad = copy.deepcopy(env)
    bad["payloadType"] = "application/json"
    with pytest.raises(VerificationError):
        Envelope.from_dict(bad).verify([SSL_KEY], 1)


def test_securesystemslib_envelope_verifies_with_ours() -> None:
    theirs = Envelope(STATEMENT.to_bytes(), PAYLOAD_TYPE, {})
    theirs.sign(CryptoSigner(KEY, SSL_KEY))
    got = statement.verify_statement(theirs.to_dict(), KEYS)
    assert got == STATEMENT


def test_unknown_keys_and_thresholds() -> None:
    env = sign_envelope(b"x", "t", KEY, KEYID)
    with pytest.raises(SignatureError, match="0 valid"):
        verify_envelope(env, {"someone-else": OTHER.public_key()})
    two = dsse.add_signature(env, OTHER, "other")
    both = {KEYID: KEY.public_key(), "other": OTHER.public_key()}
    assert verify_envelope(two, both, threshold=2) == b"x"
    with pytest.raises(SignatureError, match="needs 2"):
        verify_envelope(two, KEYS, threshold=2)
    # A signature that names a trusted key but was made by another key is tampering.
    wrong = sign_envelope(b"x", "t", OTHER, KEYID)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(wrong, KEYS)
    assert issubclass(SignatureError, IntegrityError)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("payload"),
        lambda e: e.update(extra=1),
        lambda e: e.update(signatures=[]),
        lambda e: e["signatures"][0].update(keyId="x"),
        lambda e: e.update(payload=e["payload"] + "="),
        lambda e: e.update(payload=e["payload"].replace("+", "-").replace("/", "_") + "-"),
        lambda e: e.update(payloadType=7),
    ],
)
def test_malformed_envelopes_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    env = sign_envelope(b"\xfb\xff payload", "t", KEY, KEYID)
    mutate(env)
    with pytest.raises(ValidationError):
        verify_envelope(env, KEYS)


SERIALISED = json.dumps(statement.sign_statement(STATEMENT, KEY, KEYID), separators=(",", ":")).encode()


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(SERIALISED) - 1), st.integers(min_value=1, max_value=255))
def test_tamper_any_byte_fails(pos: int, delta: int) -> None:
    data = bytearray(SERIALISED)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises((ValidationError, IntegrityError)):
        statement.verify_statement(dsse.parse_envelope(bytes(data)), KEYS)


def test_statement_shape_and_canonical_bytes() -> None:
    d = json.loads(STATEMENT.to_bytes())
    assert d["_type"] == "https://in-toto.io/Statement/v1"
    assert d["subject"] == [{"name": "model.safetensors", "digest": {"sha256": DIGEST}}]
    assert d["predicateType"] == "https://onshore.dev/residency/v1"
    assert STATEMENT.to_bytes() == json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    assert statement.parse_statement(STATEMENT.to_bytes()) == STATEMENT
    assert statement.build_statement({"a": DIGEST}, "p", {}).subjects == (Subject("a", DIGEST),)


@pytest.mark.parametrize(
    "doc",
    [
        {"_type": "https://in-toto.io/Statement/v0.1", "subject": [], "predicateType": "p"},
        {"_type": statement.STATEMENT_TYPE, "subject": [], "predicateType": "p"},
        {
            "_type": statement.STATEMENT_TYPE,
            "subject": [{"name": "a", "digest": {"sha512": "00"}}],
            "predicateType": "p",
        },
        {
            "_type": statement.STATEMENT_TYPE,
            "subject": [{"name": "a", "digest": {"sha256": "XYZ"}}],
            "predicateType": "p",
        },
        {"_type": statement.STATEMENT_TYPE, "subject": [{"name": "a", "digest": {"sha256": DIGEST}}]},
        {
            "_type": statement.STATEMENT_TYPE,
            "subject": [{"name": "a", "digest": {"sha256": DIGEST}}],
            "predicateType": "p",
            "predicate": [],
        },
    ],
)
def test_bad_statements_refused(doc) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StatementError):
        statement.parse_statement(json.dumps(doc).encode())
