"""Envelope encryption: data keys wrapped under a key-encryption key (AES-256-GCM).

GCM rather than RFC 3394 key wrap so that each wrap is bound to its context (dataset and site)
through the associated data: a wrap copied to another dataset or site does not unwrap.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from onshore.errors import IntegrityError

DATA_KEY_BYTES = 32
_NONCE = 12


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def wrap_key(kek: bytes, data_key: bytes, context: bytes) -> bytes:
    """Encrypt ``data_key`` under ``kek``, bound to ``context``; returns nonce || ciphertext."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, context)


def unwrap_key(kek: bytes, wrapped: bytes, context: bytes) -> bytes:
    """Inverse of ``wrap_key``; raises IntegrityError if the KEK, context or bytes do not match."""
    try:
        return AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], context)
    except (InvalidTag, ValueError):
        raise IntegrityError(
            f"wrapped key does not open for context {context.decode(errors='replace')!r}: "
            "wrong site key, tampered wrap, or a wrap taken from another dataset"
        ) from None
