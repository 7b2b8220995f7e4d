"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint) and Ed25519 cosignatures
(https://c2sp.org/tlog-cosignature, ``cosignature/v1``).

A checkpoint is a signed note whose text is the log's origin, its tree size in decimal and its
RFC 9162 root hash in base64, then optional extension lines. The log signs it with an ordinary
note signature; witnesses append cosignatures whose key ID uses signature type 0x04 and whose
signature covers ``cosignature/v1\\ntime <t>\\n`` followed by the checkpoint text.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.ledger.notes import (
    SIG_COSIGNATURE_V1,
    Ed25519Verifier,
    NoteError,
    NoteSignature,
    b64decode_strict,
    check_key_name,
    encode_verifier_key,
    key_id,
    open_note,
    parse_verifier_key,
    raw_public_key,
    sign_note,
    split_note,
    verified_lines,
)

HASH_SIZE = 32
MAX_TIMESTAMP = (1 << 63) - 1
"""tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1."""
MAX_SIZE = (1 << 63) - 1
"""The largest tree size accepted: what a signed 64-bit database integer holds."""

_DECIMAL = re.compile(r"(0|[1-9][0-9]*)")


class CheckpointError(NoteError):
    """The note text is not a well-formed checkpoint; the message names the line."""


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: ``origin``, tree ``size`` and RFC 9162 ``root_hash`` (32 bytes)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def to_text(self) -> str:
        """The note text (tlog-checkpoint, "Note text"), each line ending in a newline."""
        _check_fields(self)
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii")]
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text, refusing anything tlog-checkpoint does not allow."""
        return parse(text)


def _check_fields(cp: Checkpoint) -> None:
    if not cp.origin or "\n" in cp.origin:
        raise CheckpointError("checkpoint origin must be one non-empty line")
    if not isinstance(cp.size, int) or isinstance(cp.size, bool) or cp.size < 0:
        raise CheckpointError(f"checkpoint size must be a non-negative integer, got {cp.size!r}")
    if not isinstance(cp.root_hash, bytes) or len(cp.root_hash) != HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash must be {HASH_SIZE} bytes")
    for ext in cp.extensions:
        if not ext or "\n" in ext:
            raise CheckpointError("checkpoint extension lines must be single non-empty lines")


def parse(text: str) -> Checkpoint:
    """Parse checkpoint note text: origin, decimal size without leading zeroes, base64 root hash,
    then non-empty extension lines (tlog-checkpoint, "Note text")."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise CheckpointError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs at least three lines: origin, size, root hash")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin (line 1) is empty")
    # At most 19 digits: a size must fit a signed 64-bit integer, and int() of a huge digit string
    # is slow (or refused by Python's digit limit) before any signature is checked.
    if not _DECIMAL.fullmatch(size_line) or len(size_line) > 19 or int(size_line) > MAX_SIZE:
        raise CheckpointError(f"checkpoint size (line 2) must be decimal without leading zeroes and below 2^63, "
                              f"got {size_line[:40]!r}")
    try:
        root = b64decode_strict(root_line, "checkpoint root hash (line 3)")
    except NoteError as e:
        raise CheckpointError(str(e)) from None
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"checkpoint root hash (line 3) must be {HASH_SIZE} bytes, got {len(root)}")
    for i, ext in enumerate(extensions, start=4):
        if not ext:
            raise CheckpointError(f"checkpoint extension line {i} is empty")
    return Checkpoint(origin, int(size_line), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, name: str, key: Ed25519PrivateKey) -> str:
    """Sign a checkpoint as a note with the log key ``name`` (which SHOULD equal the origin)."""
    return sign_note(cp.to_text(), name, key)


def verify_checkpoint(
    note: str | bytes, log_verifier_key: str | Ed25519Verifier, origin: str | None = None
) -> Checkpoint:
    """Verify the log's signature on a checkpoint note and parse it.

    Other signature lines (cosignatures, rotated keys) are ignored, as signed-note requires.
    When ``origin`` is given the checkpoint must name it. Raises SignatureError or CheckpointError.
    """
    text, _ = open_note(note, [log_verifier_key])
    cp = parse(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for log {cp.origin!r}, expected {origin!r}")
    return cp


# --- cosignatures (tlog-cosignature, Ed25519 "cosignature/v1") ----------------------------------


def cosigned_message(text: str, timestamp: int) -> bytes:
    """The message an Ed25519 cosigner signs (tlog-cosignature, "Ed25519 signed message")."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode("utf-8")


def cosigner_key_id(name: str, public_key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """``SHA-256(name || "\\n" || 0x04 || public key)[:4]`` (tlog-cosignature, "Format")."""
    return key_id(name, SIG_COSIGNATURE_V1, raw_public_key(public_key))


def cosigner_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The cosigner's vkey, with signature type 0x04."""
    return encode_verifier_key(name, public_key, SIG_COSIGNATURE_V1)


@dataclass(frozen=True)
class CosignatureVerifier:
    """Verifies ``timestamped_signature`` = u64 timestamp (big-endian) || Ed25519 signature."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse a cosigner vkey (signature type 0x04)."""
        v = parse_verifier_key(vkey, SIG_COSIGNATURE_V1)
        return cls(v.name, v.key_id, v.public_key)

    def verify(self, text: bytes, signature: bytes) -> bool:
        """True when the timestamped signature is valid for the checkpoint ``text``."""
        ts = timestamp_of(signature)
        if ts is None:
            return False
        try:
            self.public_key.verify(signature[8:], cosigned_message(text.decode("utf-8"), ts))
        except InvalidSignature:
            return False
        return True


def timestamp_of(signature: bytes) -> int | None:
    """The timestamp of a ``timestamped_signature``, or None if the structure is malformed."""
    if len(signature) != 8 + 64:
        return None
    (ts,) = struct.unpack(">Q", signature[:8])
    return ts if ts <= MAX_TIMESTAMP else None


def _check_timestamp(timestamp: int) -> None:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp must be an integer in [0, 2^63-1], got {timestamp!r}")


def cosign(checkpoint_note: str, witness_name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """Append a ``cosignature/v1`` line by ``witness_name`` to a checkpoint note.

    This only signs; deciding whether the checkpoint deserves it (log signature, consistency) is
    the witness's job. An earlier cosignature by the same key is replaced so that a note carries
    one statement per cosigner.
    """
    text, sigs = split_note(checkpoint_note)
    mine = cosignature(text, witness_name, key, timestamp)
    kept = [s for s in sigs if (s.name, s.key_id) != (mine.name, mine.key_id)]
    kept.append(mine)
    return text + "\n" + "".join(s.line() for s in kept)


def cosignature(text: str, witness_name: str, key: Ed25519PrivateKey, timestamp: int) -> NoteSignature:
    """The ``cosignature/v1`` signature line by ``witness_name`` over a checkpoint's note ``text``.

    Only signs (see :func:`cosign`); refuses a text that is not a checkpoint, a bad key name or a
    timestamp outside [0, 2^63-1].
    """
    check_key_name(witness_name)
    _check_timestamp(timestamp)
    parse(text)
    kid = cosigner_key_id(witness_name, key)
    sig = key.sign(cosigned_message(text, timestamp))
    return NoteSignature(witness_name, kid, struct.pack(">Q", timestamp) + sig)


@dataclass(frozen=True)
class VerifiedCosignature:
    """A cosignature that verified: who made it and when (POSIX seconds)."""

    name: str
    timestamp: int


def verified_cosignatures(
    note: str | bytes, witness_vkeys: Sequence[str | CosignatureVerifier]
) -> list[VerifiedCosignature]:
    """Check every cosignature by a trusted witness; return those that verified, with times.

    Lines from unknown keys are ignored. A line from a trusted witness that does not verify
    rejects the note (signed-note: a failing signature from a known key SHOULD reject it), since
    it means the checkpoint or the cosignature was altered.
    """
    text, sigs = split_note(note)
    parse(text)
    verifiers = [CosignatureVerifier.from_vkey(v) if isinstance(v, str) else v for v in witness_vkeys]
    lines = verified_lines(
        text, sigs, verifiers,
        lambda s: f"cosignature by witness {s.name} does not verify; the checkpoint or the cosignature was altered")
    out: list[VerifiedCosignature] = []
    for sig in lines:
        ts = timestamp_of(sig.signature)
        assert ts is not None  # verify() returned True
        if all(c.name != sig.name for c in out):
            out.append(VerifiedCosignature(sig.name, ts))
    return out


def verify_cosignatures(note: str | bytes, witness_vkeys: Sequence[str | CosignatureVerifier]) -> list[str]:
    """Names of the trusted witnesses whose cosignatures on this checkpoint verify.

    Does not check the log's own signature; call :func:`verify_checkpoint` for that. A quorum
    policy (how many witnesses are enough) is the caller's.
    """
    return [c.name for c in verified_cosignatures(note, witness_vkeys)]
