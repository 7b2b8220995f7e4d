"""The tlog-witness wire format (https://c2sp.org/tlog-witness): the ``add-checkpoint`` request
body and the witness's answers. Both sides use this module; it does no I/O.

A request body is ``old <size>\\n``, up to 63 consistency-proof lines (one base64 hash each), an
empty line, then the signed checkpoint note. A success answer is one or more cosignature lines;
a ``409 Conflict`` about the old size carries the witness's latest size as ``<size>\\n`` with
content type ``text/x.tlog.size``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from onshore.errors import ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger.notes import NoteError, b64decode_strict, split_note

MAX_PROOF_LINES = 63
"""tlog-witness: a client MUST NOT send more than 63 consistency proof lines."""

MAX_BODY_BYTES = 64 * 1024
"""A witness reads no more than this: 63 proof lines are under 3 KiB, and a checkpoint with many
cosignatures fits well within it. Anything larger is refused unread (413)."""

SIZE_CONTENT_TYPE = "text/x.tlog.size"
ADD_CHECKPOINT_PATH = "/add-checkpoint"

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


class MalformedRequest(ValidationError):
    """The request body breaks the tlog-witness format (400); the message names the line."""


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed ``add-checkpoint`` request: the client's idea of the witness's latest size, a
    consistency proof from that size, and the checkpoint note (signatures not yet checked)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str
    checkpoint: ckpt.Checkpoint


def parse_size(text: str, what: str) -> int:
    """A decimal tree size without leading zeroes and below 2**63, or MalformedRequest."""
    if not _DECIMAL.fullmatch(text) or int(text) > ckpt.MAX_SIZE:
        raise MalformedRequest(f"{what} must be a decimal tree size without leading zeroes, got {text[:40]!r}")
    return int(text)


def encode_request(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body for ``old_size``, its consistency ``proof`` and the signed ``note``."""
    lines = [f"old {old_size}\n", *(base64.b64encode(h).decode("ascii") + "\n" for h in proof), "\n"]
    return ("".join(lines) + note).encode("utf-8")


def decode_request(body: bytes) -> AddCheckpoint:
    """Parse a request body; refuses (MalformedRequest) anything tlog-witness does not allow.

    Refused: a body over MAX_BODY_BYTES, not UTF-8, an old size line that is not ``old N``, a proof
    line that is not one canonical base64 hash of 32 bytes, more than 63 proof lines, a proof when
    the old size is 0, an old size above the checkpoint's size, or a note that is not a well-formed
    signed checkpoint. Signatures are not checked here: that is the witness's job.
    """
    if len(body) > MAX_BODY_BYTES:
        raise MalformedRequest(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("request body is not UTF-8") from None
    head, sep, rest = text.partition("\n")
    if not sep or not head.startswith("old "):
        raise MalformedRequest("request must start with an 'old <size>' line")
    old_size = parse_size(head[4:], "the old size (line 1)")
    proof: list[bytes] = []
    while True:
        line, sep, after = rest.partition("\n")
        if not sep:
            raise MalformedRequest("request has no empty line between the proof and the checkpoint")
        if not line:
            note = after
            break
        if len(proof) == MAX_PROOF_LINES:
            raise MalformedRequest(f"request has more than {MAX_PROOF_LINES} consistency proof lines")
        where = f"consistency proof line {len(proof) + 2}"
        try:
            h = b64decode_strict(line, where)
        except NoteError as e:
            raise MalformedRequest(str(e)) from None
        if len(h) != ckpt.HASH_SIZE:
            raise MalformedRequest(f"{where} is not a {ckpt.HASH_SIZE}-byte hash")
        proof.append(h)
        rest = after
    if old_size == 0 and proof:
        raise MalformedRequest("a consistency proof from old size 0 must be empty")
    try:
        note_text, _ = split_note(note)
        cp = ckpt.parse(note_text)
    except NoteError as e:  # CheckpointError too
        raise MalformedRequest(f"the checkpoint: {e}") from None
    if old_size > cp.size:
        raise MalformedRequest(f"old size {old_size} is larger than the checkpoint's size {cp.size}")
    return AddCheckpoint(old_size, tuple(proof), note, cp)


def encode_size(size: int) -> bytes:
    """The body of a ``409 Conflict`` about the old size: the witness's latest size and a newline."""
    return f"{size}\n".encode("ascii")


def decode_size(body: bytes) -> int:
    """The witness's latest size from a ``text/x.tlog.size`` body; MalformedRequest if it is not one."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRequest("the witness's size answer is not ASCII") from None
    if not text.endswith("\n"):
        raise MalformedRequest("the witness's size answer does not end with a newline")
    return parse_size(text[:-1], "the witness's latest size")
