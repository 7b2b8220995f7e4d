"""Sealed files: bytes encrypted at rest under one data key with AES-256-GCM, in segments.

Used for model artifacts (weights and their JSON), which are whole files rather than Parquet. A
sealed blob is ``MAGIC || nonce prefix (7 bytes) || segment ...``; each segment holds up to
:data:`SEGMENT` bytes of plaintext plus a 16-byte tag. Segment ``i`` is encrypted with nonce
``prefix || i (4 bytes, big-endian) || last (1 byte)`` and the caller's ``context`` as associated
data (the online-AE "STREAM" construction of Hoang, Reyhanitabar, Rogaway and Vizár, 2015), so
that no segment can be dropped, reordered, moved to another file or to another model, and the
end cannot be cut off. Segments keep every AES-GCM call far below its per-call size limit.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from onshore.errors import IntegrityError

MAGIC = b"onshore-sealed/1\n"
SEGMENT = 1 << 20
_PREFIX = 7
_TAG = 16


def _nonce(prefix: bytes, i: int, last: bool) -> bytes:
    return prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def seal(key: bytes, data: bytes, context: bytes) -> bytes:
    """Encrypt ``data`` under ``key`` (32 bytes), bound to ``context``; a fresh random nonce prefix."""
    prefix = os.urandom(_PREFIX)
    aead = AESGCM(key)
    count = max(1, -(-len(data) // SEGMENT))
    if count >= 1 << 32:
        raise IntegrityError("file too large to seal (more than 2^32 segments)")
    out = [MAGIC, prefix]
    view = memoryview(data)
    for i in range(count):
        out.append(aead.encrypt(_nonce(prefix, i, i == count - 1), bytes(view[i * SEGMENT:(i + 1) * SEGMENT]),
                                context))
    return b"".join(out)


def unseal(key: bytes, blob: bytes, context: bytes, what: str = "sealed file") -> bytes:
    """Inverse of :func:`seal`; raises IntegrityError naming ``what`` if anything does not open.

    Refused: another key or context, any altered, dropped, reordered or truncated segment.
    """
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _PREFIX + _TAG:
        raise IntegrityError(f"{what}: not a sealed Onshore file (bad header or too short)")
    prefix = blob[len(MAGIC):len(MAGIC) + _PREFIX]
    body = memoryview(blob)[len(MAGIC) + _PREFIX:]
    step = SEGMENT + _TAG
    count = max(1, -(-len(body) // step))
    aead = AESGCM(key)
    out = []
    try:
        for i in range(count):
            out.append(aead.decrypt(_nonce(prefix, i, i == count - 1), bytes(body[i * step:(i + 1) * step]),
                                    context))
    except (InvalidTag, ValueError):
        raise IntegrityError(f"{what}: does not open with this key and context: the file was altered, truncated "
                             "or replaced, or the key is not this artifact's") from None
    return b"".join(out)
