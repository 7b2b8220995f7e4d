"""C2SP signed notes (https://c2sp.org/signed-note): text signed by one or more keys.

A note is its text (ending in a newline), a blank line, then signature lines
``— <key name> base64(key ID || signature)``. This module formats and parses notes, and signs and
verifies Ed25519 signatures (signature type 0x01). Other signature types (the timestamped
cosignatures of c2sp.org/tlog-cosignature, type 0x04) plug in through :class:`NoteVerifier`.
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from onshore.encoding import b64decode_canonical
from onshore.errors import IntegrityError, ValidationError

SIG_ED25519 = 0x01
"""Signature type byte for Ed25519 note signatures (signed-note, "Signature types")."""

SIG_COSIGNATURE_V1 = 0x04
"""Signature type byte for timestamped Ed25519 checkpoint cosignatures (tlog-cosignature)."""

EM_DASH = "\u2014"
MAX_SIGNATURES = 100
"""Signed-note says verifiers SHOULD cap signatures and MUST accept at least 16."""
MAX_NOTE_BYTES = 1 << 20


class NoteError(ValidationError):
    """A note, signature line or verifier key is malformed; the message says which rule it breaks."""


class SignatureError(IntegrityError):
    """A signature from a trusted key does not verify, or no trusted key signed at all."""


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line: the key name, the 4-byte key ID, and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, ``— name base64(key ID || signature)`` plus newline."""
        payload = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{EM_DASH} {self.name} {payload}\n"


class NoteVerifier(Protocol):
    """What :func:`open_note` needs from a verifier: a name, a key ID, and a check."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, text: bytes, signature: bytes) -> bool:
        """True when ``signature`` (after the key ID) is valid for the note ``text``."""
        ...


def check_key_name(name: str) -> str:
    """Key names MUST be non-empty, without Unicode spaces or ``+`` (signed-note, "Format")."""
    if not isinstance(name, str) or not name:
        raise NoteError("a note key name must not be empty")
    for ch in name:
        if ch == "+" or ch.isspace() or unicodedata.category(ch) == "Zs":
            raise NoteError(f"note key name {name!r} must not contain spaces or '+'")
        if ord(ch) < 0x20 or ch == "\x7f":
            raise NoteError(f"note key name {name!r} must not contain control characters")
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(key name || 0x0A || signature type || public key)[:4]`` (signed-note, "Signatures")."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def raw_public_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 32-byte RFC 8032 encoding of an Ed25519 public key (of a private key's public half)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_verifier_key(name: str, public_key: Ed25519PublicKey, sig_type: int = SIG_ED25519) -> str:
    """The vkey ``name+hex(key ID)+base64(type || public key)`` (signed-note, "Verifier keys")."""
    check_key_name(name)
    raw = raw_public_key(public_key)
    kid = key_id(name, sig_type, raw)
    return f"{name}+{kid.hex()}+{base64.b64encode(bytes([sig_type]) + raw).decode('ascii')}"


def b64decode_strict(text: str, what: str) -> bytes:
    """Canonical standard base64 (see onshore.encoding), or NoteError."""
    try:
        return b64decode_canonical(text, what)
    except ValueError as e:
        raise NoteError(str(e)) from None


@dataclass(frozen=True)
class Ed25519Verifier:
    """A parsed verifier key. ``sig_type`` 0x01 verifies plain note signatures."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey
    sig_type: int = SIG_ED25519

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return raw_public_key(self.public_key)

    def vkey(self) -> str:
        """This key as a vkey string."""
        return encode_verifier_key(self.name, self.public_key, self.sig_type)

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Ed25519 over the note text (signed-note, "Ed25519 signatures")."""
        if self.sig_type != SIG_ED25519 or len(signature) != 64:
            return False
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


def parse_verifier_key(vkey: str, sig_type: int = SIG_ED25519) -> Ed25519Verifier:
    """Parse ``name+hexkeyid+base64(type || key)`` and check the key ID matches name and key.

    ``sig_type`` is the signature type the caller expects (0x01 for note signatures, 0x04 for
    cosignatures); a vkey of another type is refused rather than silently used for the wrong job.
    """
    # Names and key IDs hold no '+', but standard base64 may: split twice only.
    parts = vkey.strip().split("+", 2) if isinstance(vkey, str) else []
    if len(parts) != 3:
        raise NoteError("a verifier key has the form name+hexkeyid+base64key")
    name, hex_id, b64key = parts
    check_key_name(name)
    if len(hex_id) != 8 or hex_id != hex_id.lower():
        raise NoteError(f"verifier key {name!r}: the key ID must be 8 lowercase hex digits")
    try:
        kid = bytes.fromhex(hex_id)
    except ValueError:
        raise NoteError(f"verifier key {name!r}: the key ID is not hex") from None
    material = b64decode_strict(b64key, f"verifier key {name!r}")
    if len(material) != 33:
        raise NoteError(f"verifier key {name!r}: expected a type byte and a 32-byte Ed25519 key")
    if material[0] != sig_type:
        raise NoteError(f"verifier key {name!r} has signature type 0x{material[0]:02x}, expected 0x{sig_type:02x}")
    if key_id(name, material[0], material[1:]) != kid:
        raise NoteError(f"verifier key {name!r}: the key ID does not match the name and key")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(material[1:])
    except ValueError:
        raise NoteError(f"verifier key {name!r}: not an Ed25519 public key") from None
    return Ed25519Verifier(name, kid, public_key, material[0])


def _check_note_chars(note: str) -> None:
    # Control characters other than newline could hide text from a human reader (signed-note, "Format").
    for i, ch in enumerate(note):
        if (ord(ch) < 0x20 and ch != "\n") or ch == "\x7f":
            raise NoteError(f"note contains control character U+{ord(ch):04X} at offset {i}")


def check_text(text: str) -> None:
    """A note text must be non-empty, valid, end in a newline, and have no other control chars."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_note_chars(text)


def parse_signature_line(line: str) -> NoteSignature:
    """Parse ``— name base64(key ID || signature)`` (without its newline)."""
    prefix = EM_DASH + " "
    if not line.startswith(prefix):
        raise NoteError(f"signature line must start with an em dash and a space: {line[:40]!r}")
    rest = line[len(prefix) :]
    name, sep, b64 = rest.partition(" ")
    if not sep:
        raise NoteError(f"signature line has no signature after the key name: {line[:40]!r}")
    check_key_name(name)
    raw = b64decode_strict(b64, f"signature of {name!r}")
    if len(raw) < 5:
        raise NoteError(f"signature of {name!r} is too short for a key ID and a signature")
    return NoteSignature(name, raw[:4], raw[4:])


def split_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and parsed signature lines, checking the format only.

    The text is everything up to the last blank line (signed-note, "Format"); nothing here says the
    signatures are valid. Use :func:`open_note` for that.
    """
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    if not isinstance(note, str):
        raise NoteError("a note is text")
    if len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note is not valid UTF-8") from None
    _check_note_chars(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("note must end with a newline after its last signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, [parse_signature_line(line) for line in lines]


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign ``text`` with an Ed25519 key named ``name`` and return the signed note."""
    check_text(text)
    check_key_name(name)
    kid = key_id(name, SIG_ED25519, raw_public_key(private_key))
    sig = NoteSignature(name, kid, private_key.sign(text.encode("utf-8")))
    return text + "\n" + sig.line()


def add_signatures(note: str, signatures: Sequence[NoteSignature]) -> str:
    """Append signature lines to a note (e.g. cosignatures); checks the note's format first."""
    split_note(note)
    return note + "".join(s.line() for s in signatures)


def _as_verifier(v: NoteVerifier | str) -> NoteVerifier:
    return parse_verifier_key(v) if isinstance(v, str) else v


def verified_lines(text: str, sigs: Sequence[NoteSignature], verifiers: Sequence[NoteVerifier],
                   failure: Callable[[NoteSignature], str]) -> list[NoteSignature]:
    """The signature lines made by trusted keys, each checked over ``text`` (signed-note, "Signatures").

    Lines whose name and key ID match no trusted key are skipped; a trusted key's line that does
    not verify raises SignatureError with ``failure(line)``: it means the note was altered.
    """
    known = {(v.name, bytes(v.key_id)): v for v in verifiers}
    text_bytes = text.encode("utf-8")
    out: list[NoteSignature] = []
    for sig in sigs:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verify(text_bytes, sig.signature):
            raise SignatureError(failure(sig))
        out.append(sig)
    return out


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier | str]) -> tuple[str, list[str]]:
    """Verify a note against trusted keys; return its text and the names of the keys that signed.

    Following signed-note, "Signatures": lines from unknown keys (name and key ID not both
    matching a trusted key) are ignored; a line from a trusted key that fails to verify rejects
    the whole note; a note with no verified signature from a trusted key is rejected. Raises
    :class:`NoteError` for a malformed note and :class:`SignatureError` for a bad signature.
    """
    text, sigs = split_note(note)
    trusted = list(map(_as_verifier, verifiers))
    lines = verified_lines(
        text, sigs, trusted,
        lambda s: f"signature by {s.name} (key {s.key_id.hex()}) does not verify; the note was altered or signed "
                  "by another key")
    signed = list(dict.fromkeys(s.name for s in lines))
    if not signed:
        raise SignatureError(
            "note is not signed by any trusted key (trusted: " + ", ".join(sorted({v.name for v in trusted})) + ")"
        )
    return text, signed
