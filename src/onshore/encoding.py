"""Strict base64 for signed material (RFC 4648 §4, standard alphabet, with padding).

It is also the one text encoding of hashes Onshore shows (ledger roots, leaf hashes, proofs):
checkpoints carry their root in it (C2SP signed note), so a root printed by ``ledger verify``
or the dashboard can be compared with a checkpoint's line by eye.

Two spellings of the same bytes would let signed material change without breaking a signature,
so anything that does not re-encode to exactly the same text is refused.
"""

from __future__ import annotations

import base64
import binascii


def b64encode(data: bytes) -> str:
    """``data`` as standard base64 text with padding (what :func:`b64decode_canonical` accepts)."""
    return base64.b64encode(data).decode("ascii")


def b64decode_canonical(text: object, what: str) -> bytes:
    """Decode ``text``; raise ValueError naming ``what`` unless it is canonical standard base64."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{what} is not canonical standard base64")
    return raw
