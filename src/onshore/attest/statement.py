"""in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md).

A Statement binds subjects (artifacts by name and SHA-256) to a typed predicate. It travels as
the payload of a DSSE envelope with payload type ``application/vnd.in-toto+json``. We serialise it
as RFC 8785 canonical JSON so that the same statement always yields the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.attest.dsse import sign_envelope, verify_envelope
from onshore.errors import ValidationError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class StatementError(ValidationError):
    """The payload is not an in-toto Statement v1 of the expected shape; the message names the field."""


@dataclass(frozen=True)
class Subject:
    """One artifact the statement is about: a name and its lowercase hex SHA-256."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise StatementError("subject name must be a non-empty string")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise StatementError(f"subject {self.name!r}: sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True)
class Statement:
    """An in-toto Statement v1: subjects, a predicate type URI and the predicate object."""

    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The Statement's JSON object (statement.md, "Schema")."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in self.subjects],
            "predicateType": self.predicate_type,
            "predicate": self.predicate,
        }

    def to_bytes(self) -> bytes:
        """RFC 8785 canonical JSON of :meth:`to_dict`: one statement, one byte string."""
        return rfc8785.dumps(self.to_dict())


def build_statement(
    subjects: Sequence[Subject] | Mapping[str, str], predicate_type: str, predicate: Mapping[str, Any]
) -> Statement:
    """Make a Statement; ``subjects`` may be Subjects or a mapping of name to sha256 hex."""
    subs = tuple(Subject(n, d) for n, d in subjects.items()) if isinstance(subjects, Mapping) else tuple(subjects)
    if not subs:
        raise StatementError("a statement needs at least one subject")
    if not isinstance(predicate_type, str) or not predicate_type:
        raise StatementError("predicateType must be a non-empty URI")
    st = Statement(subs, predicate_type, dict(predicate))
    st.to_bytes()  # refuse now what could not be serialised (floats out of range, non-str keys)
    return st


def parse_statement(payload: bytes | str | Mapping[str, Any]) -> Statement:
    """Parse and check a Statement v1 from its JSON bytes (or an already-decoded object).

    Subjects must carry a sha256 digest (other algorithms may sit beside it); the predicate must
    be an object.
    """
    if isinstance(payload, Mapping):
        doc: Any = payload
    else:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise StatementError(f"statement is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise StatementError("statement must be a JSON object")
    if doc.get("_type") != STATEMENT_TYPE:
        raise StatementError(f"_type must be {STATEMENT_TYPE!r}, got {doc.get('_type')!r}")
    raw_subjects = doc.get("subject")
    if not isinstance(raw_subjects, list) or not raw_subjects:
        raise StatementError("subject must be a non-empty list")
    subjects = []
    for i, s in enumerate(raw_subjects):
        if not isinstance(s, dict) or not isinstance(s.get("digest"), dict):
            raise StatementError(f"subject[{i}] must be an object with a digest object")
        if "sha256" not in s["digest"]:
            raise StatementError(f"subject[{i}] has no sha256 digest")
        subjects.append(Subject(s.get("name"), s["digest"]["sha256"]))
    ptype = doc.get("predicateType")
    if not isinstance(ptype, str) or not ptype:
        raise StatementError("predicateType must be a non-empty string")
    predicate = doc.get("predicate", {})
    if not isinstance(predicate, dict):
        raise StatementError("predicate must be a JSON object")
    return Statement(tuple(subjects), ptype, predicate)


def sign_statement(statement: Statement, key: Ed25519PrivateKey, keyid: str) -> dict[str, Any]:
    """Wrap a Statement in a DSSE envelope signed by ``key``."""
    return sign_envelope(statement.to_bytes(), PAYLOAD_TYPE, key, keyid)


def verify_statement(
    envelope: dict[str, Any], public_keys: Mapping[str, Ed25519PublicKey], *, threshold: int = 1
) -> Statement:
    """Verify a DSSE envelope holding an in-toto Statement and return the Statement."""
    payload = verify_envelope(envelope, public_keys, payload_type=PAYLOAD_TYPE, threshold=threshold)
    return parse_statement(payload)
