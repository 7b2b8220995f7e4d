"""Signed notes, checkpoints and cosignatures against the C2SP specs, with an independent parser."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from onshore.errors import IntegrityError, ValidationError
from onshore.ledger import checkpoint as ck
from onshore.ledger import notes
from onshore.ledger.checkpoint import Checkpoint, CheckpointError
from onshore.ledger.notes import NoteError, SignatureError

# Example from c2sp.org/signed-note, "Verifier keys" / "Example".
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3m"
    "FXmRKuwHjG1Yu72IneyaQM=\n"
)

LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG_NAME = "example.com/onshore-log"
W1_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
W2_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
ROOT = hashlib.sha256(b"root").digest()
CP = Checkpoint(LOG_NAME, 20852163, ROOT)


def raw(pub: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    return notes.raw_public_key(pub)


# --- an independent reading of the specs, used as an interop check ------------------------------


def spec_parse_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Parse a signed note straight from c2sp.org/signed-note, sharing no code with onshore."""
    assert all(c == "\n" or ord(c) >= 0x20 for c in note)
    cut = note.rindex("\n\n")
    text, sigblock = note[: cut + 1], note[cut + 2 :]
    assert text.endswith("\n") and sigblock.endswith("\n")
    sigs = []
    for line in sigblock.splitlines():
        dash, name, b64 = line.split(" ")
        assert dash == "\u2014" and name and "+" not in name
        blob = base64.b64decode(b64, validate=True)
        sigs.append((name, blob[:4], blob[4:]))
    return text, sigs


def spec_key_id(name: str, sig_type: int, pub: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\x0a" + bytes([sig_type]) + pub).digest()[:4]


def spec_check_checkpoint(note: str, log_pub: Ed25519PublicKey, witnesses: dict[str, Ed25519PublicKey]) -> list[str]:
    """Verify a checkpoint and its cosignatures per tlog-checkpoint / tlog-cosignature."""
    text, sigs = spec_parse_note(note)
    origin, size, root, *_ = text.split("\n")
    assert size == str(int(size)) and len(base64.b64decode(root)) == 32
    log_ok = False
    cosigned = []
    for name, kid, sig in sigs:
        if name == LOG_NAME and kid == spec_key_id(name, 1, raw(log_pub)):
            log_pub.verify(sig, text.encode())
            log_ok = True
        elif name in witnesses and kid == spec_key_id(name, 4, raw(witnesses[name])):
            (ts,) = struct.unpack(">Q", sig[:8])
            msg = b"cosignature/v1\ntime " + str(ts).encode() + b"\n" + text.encode()
            witnesses[name].verify(sig[8:], msg)
            cosigned.append(name)
    assert log_ok
    return cosigned


# --- signed notes --------------------------------------------------------------------------------


def test_spec_example_note_verifies() -> None:
    text, names = notes.open_note(SPEC_NOTE, [SPEC_VKEY])
    assert text == "This is an example message.\n"
    assert names == ["example.com/foo"]
    v = notes.parse_verifier_key(SPEC_VKEY)
    assert v.vkey() == SPEC_VKEY


def test_sign_note_round_trip_and_format() -> None:
    note = notes.sign_note("hello\nworld\n", "example.com/k", LOG_KEY)
    vkey = notes.encode_verifier_key("example.com/k", LOG_KEY.public_key())
    assert notes.open_note(note, [vkey]) == ("hello\nworld\n", ["example.com/k"])
    text, sigs = spec_parse_note(note)
    assert text == "hello\nworld\n"
    ((name, kid, sig),) = sigs
    assert kid == spec_key_id(name, 1, raw(LOG_KEY)) and len(sig) == 64
    assert vkey.split("+", 2)[1] == kid.hex()
    assert "\u2014 example.com/k " in note


def test_text_may_contain_blank_lines() -> None:
    note = notes.sign_note("a\n\nb\n", "k", LOG_KEY)
    assert notes.open_note(note, [notes.encode_verifier_key("k", LOG_KEY.public_key())])[0] == "a\n\nb\n"


@pytest.mark.parametrize(
    "bad",
    [
        "no newline at end\n\n\u2014 k AAAAAAA=\n".rstrip("\n"),
        "text\n\u2014 k AAAAAAA=\n",  # no blank line
        "text\n\n",  # no signatures
        "text\n\n- k AAAAAAA=\n",  # hyphen instead of em dash
        "text\n\n\u2014 k+x AAAAAAA=\n",  # plus in name
        "text\n\n\u2014 k AAAA\n",  # too short
        "text\n\n\u2014 k AAAAAAA\n",  # bad base64
        "te\rxt\n\n\u2014 k AAAAAAA=\n",  # control character
        "text\n\n\u2014 k  AAAAAAA=\n",  # two spaces
    ],
)
def test_malformed_notes_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        notes.open_note(bad, [SPEC_VKEY])


def test_sign_note_refuses_bad_text_and_names() -> None:
    with pytest.raises(NoteError, match="newline"):
        notes.sign_note("no newline", "k", LOG_KEY)
    for name in ("", "a b", "a+b", "a\u00a0b"):
        with pytest.raises(NoteError):
            notes.sign_note("x\n", name, LOG_KEY)


def test_unknown_signatures_ignored_and_bad_known_rejected() -> None:
    note = notes.sign_note("x\n", "a", LOG_KEY)
    vk_a = notes.encode_verifier_key("a", LOG_KEY.public_key())
    vk_other = notes.encode_verifier_key("a", W1_KEY.public_key())  # same name, other key
    with pytest.raises(SignatureError, match="not signed by any trusted key"):
        notes.open_note(note, [vk_other])
    forged = note.replace(
        note.split(" ")[-1], base64.b64encode(bytes.fromhex(vk_a.split("+", 2)[1]) + b"\0" * 64).decode() + "\n"
    )
    with pytest.raises(SignatureError, match="does not verify"):
        notes.open_note(forged, [vk_a])


def test_verifier_key_checks() -> None:
    name, kid, key = SPEC_VKEY.split("+", 2)
    with pytest.raises(NoteError, match="key ID"):
        notes.parse_verifier_key(f"{name}+00000000+{key}")
    with pytest.raises(NoteError, match="form"):
        notes.parse_verifier_key("just-a-name")
    with pytest.raises(NoteError, match="signature type"):
        notes.parse_verifier_key(SPEC_VKEY, notes.SIG_COSIGNATURE_V1)


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_text_matches_spec_layout() -> None:
    spec_text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(spec_text)
    assert cp.origin == "example.com/behind-the-sofa" and cp.size == 20852163
    assert cp.to_text() == spec_text
    ext = Checkpoint("o", 0, ROOT, ("ext one", "ext two"))
    assert Checkpoint.parse(ext.to_text()) == ext


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",
        "\n1\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n01\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "o\n1\n" + base64.b64encode(ROOT).decode() + "\n\n",
        "o\n1\n" + base64.b64encode(ROOT).decode(),
        "o\n" + str(2**63) + "\n" + base64.b64encode(ROOT).decode() + "\n",   # beyond a 64-bit size
        "o\n" + "9" * 5000 + "\n" + base64.b64encode(ROOT).decode() + "\n",   # int() would raise ValueError
    ],
)
def test_malformed_checkpoints_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        ck.parse(text)


def test_sign_and_verify_checkpoint() -> None:
    note = ck.sign_checkpoint(CP, LOG_NAME, LOG_KEY)
    vkey = notes.encode_verifier_key(LOG_NAME, LOG_KEY.public_key())
    assert ck.verify_checkpoint(note, vkey) == CP
    assert ck.verify_checkpoint(note, vkey, origin=LOG_NAME) == CP
    with pytest.raises(CheckpointError):
        ck.verify_checkpoint(note, vkey, origin="other.example/log")
    assert spec_check_checkpoint(note, LOG_KEY.public_key(), {}) == []


def test_cosignatures_interoperate_with_independent_checker() -> None:
    note = ck.sign_checkpoint(CP, LOG_NAME, LOG_KEY)
    note = ck.cosign(note, "w1.example", W1_KEY, 1679315147)
    note = ck.cosign(note, "w2.example", W2_KEY, 1679315148)
    witnesses = {"w1.example": W1_KEY.public_key(), "w2.example": W2_KEY.public_key()}
    assert spec_check_checkpoint(note, LOG_KEY.public_key(), witnesses) == ["w1.example", "w2.example"]
    vkeys = [ck.cosigner_verifier_key(n, k) for n, k in witnesses.items()]
    assert ck.verify_cosignatures(note, vkeys) == ["w1.example", "w2.example"]
    got = ck.verified_cosignatures(note, vkeys)
    assert [c.timestamp for c in got] == [1679315147, 1679315148]
    # The log signature is still valid and still found among the other lines.
    assert ck.verify_checkpoint(note, notes.encode_verifier_key(LOG_NAME, LOG_KEY.public_key())) == CP
    # A cosignature vkey is type 0x04 and its key ID uses 0x04.
    name, kid, b64 = vkeys[0].split("+", 2)
    assert base64.b64decode(b64)[0] == 0x04
    assert bytes.fromhex(kid) == spec_key_id(name, 4, raw(W1_KEY))


def test_cosignature_signed_message_is_the_spec_one() -> None:
    note = ck.sign_checkpoint(CP, LOG_NAME, LOG_KEY)
    note = ck.cosign(note, "w1.example", W1_KEY, 1679315147)
    _, sigs = spec_parse_note(note)
    name, kid, sig = sigs[-1]
    assert len(sig) == 8 + 64 and sig[:8] == (1679315147).to_bytes(8, "big")
    msg = b"cosignature/v1\ntime 1679315147\n" + CP.to_text().encode()
    W1_KEY.public_key().verify(sig[8:], msg)
    with pytest.raises(InvalidSignature):
        W1_KEY.public_key().verify(sig[8:], CP.to_text().encode())


def test_recosign_replaces_own_line_and_ignores_unknown_witnesses() -> None:
    note = ck.sign_checkpoint(CP, LOG_NAME, LOG_KEY)
    once = ck.cosign(note, "w1.example", W1_KEY, 1)
    twice = ck.cosign(once, "w1.example", W1_KEY, 2)
    assert twice.count("w1.example") == 1
    assert ck.verify_cosignatures(twice, [ck.cosigner_verifier_key("w2.example", W2_KEY.public_key())]) == []


def test_cosign_refuses_bad_timestamp() -> None:
    note = ck.sign_checkpoint(CP, LOG_NAME, LOG_KEY)
    for ts in (-1, 1 << 63):
        with pytest.raises(ValidationError):
            ck.cosign(note, "w", W1_KEY, ts)


def _signed_and_cosigned() -> tuple[str, str, list[str]]:
    note = ck.cosign(ck.sign_checkpoint(CP, LOG_NAME, LOG_KEY), "w1.example", W1_KEY, 1679315147)
    return (
        note,
        notes.encode_verifier_key(LOG_NAME, LOG_KEY.public_key()),
        [ck.cosigner_verifier_key("w1.example", W1_KEY.public_key())],
    )


NOTE, LOG_VKEY, W_VKEYS = _signed_and_cosigned()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(NOTE.encode()) - 1), st.integers(min_value=1, max_value=255))
def test_tamper_any_byte_detected(pos: int, delta: int) -> None:
    data = bytearray(NOTE.encode())
    data[pos] = (data[pos] + delta) % 256
    # Tampering is detected when the note is refused or no longer fully verifies
    # (a changed name makes a line unknown, which drops that signer).
    try:
        cp = ck.verify_checkpoint(bytes(data), LOG_VKEY)
        names = ck.verify_cosignatures(bytes(data), W_VKEYS)
    except (ValidationError, IntegrityError):
        return
    assert cp != CP or names != ["w1.example"], f"tamper at byte {pos} went unnoticed"
