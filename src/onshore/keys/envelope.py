"""Envelope encryption: data keys wrapped under a key-encryption key (AES-256-GCM).

GCM rather than RFC 3394 key wrap so that each wrap is bound to its context (dataset and site)
through the associated data: a wrap copied to another dataset or site does not unwrap.
"""

from __future__ import annotations

import os
from typing import Any

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


def seal_key(recipient: bytes, data_key: bytes, context: bytes) -> bytes:
    """``data_key`` sealed to the X25519 public key ``recipient`` (32 raw bytes), bound to ``context``.

    HPKE's base mode in miniature (RFC 9180's shape, not its wire format): a fresh ephemeral
    X25519 key agrees a secret with ``recipient``, HKDF-SHA256 over both public keys and
    ``context`` derives an AES-256-GCM key. Returns ephemeral public key || nonce || ciphertext.
    Only the holder of the recipient's private key opens it (:func:`open_sealed`)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:
        raise IntegrityError("the recipient's key is not an X25519 public key") from None
    return eph_pub + wrap_key(_sealing_key(shared, eph_pub, recipient, context), data_key, context)


def open_sealed(private: Any, sealed: bytes, context: bytes) -> bytes:
    """Inverse of :func:`seal_key` with the recipient's X25519 private key; IntegrityError if it
    was sealed to another key, for another context, or altered."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if len(sealed) < 32 + _NONCE + 16:
        raise IntegrityError("a sealed key is too short")
    eph_pub = sealed[:32]
    mine = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise IntegrityError("a sealed key does not open: bad ephemeral key") from None
    return unwrap_key(_sealing_key(shared, eph_pub, mine, context), sealed[32:], context)


def _sealing_key(shared: bytes, eph_pub: bytes, recipient: bytes, context: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=eph_pub + recipient, info=b"onshore seal v1|" + context).derive(shared)
