"""A key store: one folder holding an Ed25519 identity key and, for sites, key-encryption keys.

The embedded default keeps key files under the owner's folder with mode 0600; an HSM or a Vault
transit engine would implement the same methods. A process acting as one site opens only that
site's key store.

A site holds one key-encryption key per dataset placed there (``datasets/NAME.key``) and one per
model whose files sit there (``models/NAME.key``). The data key of the dataset (or of each model
artifact) is wrapped under it, and withdrawal destroys it. It lives here, in the site's custody,
and not in the catalog, so that restoring a catalog backup taken before a withdrawal cannot bring
the data back: the wrap in the old catalog no longer opens.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from onshore.errors import IntegrityError, NotFoundError, ValidationError
from onshore.i18n import N_, Message
from onshore.names import check_resource_name

IDENTITY_FILE = "identity.pem"
KEK_FILE = "kek.bin"
KEK_BYTES = 32
DATASET_KEYS = "datasets"
#: The kinds of resource whose key-encryption keys a site keeps, and the folder of each.
RESOURCE_FOLDERS = {"dataset": DATASET_KEYS, "model": "models"}


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 holding ``data``; refuse to overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValidationError(f"{path}: a key already exists here; keys are never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64: the form used in the catalog, ledger and trust root."""
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise ValidationError(f"not a base64 Ed25519 public key: {text!r} ({e})") from None


class KeyStore:
    """The key files of one site, member or log, in ``directory`` (created mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._identity: Ed25519PrivateKey | None = None

    @classmethod
    def create(cls, directory: Path, with_kek: bool) -> KeyStore:
        """Generate a new identity key (and a KEK when ``with_kek``); refuses an existing store."""
        store = cls(directory)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_secret(store.directory / IDENTITY_FILE, pem)
        if with_kek:
            _write_secret(store.directory / KEK_FILE, secrets.token_bytes(KEK_BYTES))
        return store

    def identity(self) -> Ed25519PrivateKey:
        """The Ed25519 signing key; loaded once per store object."""
        if self._identity is None:
            path = self.directory / IDENTITY_FILE
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except FileNotFoundError:
                raise NotFoundError(f"{path}: identity key missing; this key store was not created") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise IntegrityError(f"{path}: not an Ed25519 private key")
            self._identity = key
        return self._identity

    def public_key(self) -> Ed25519PublicKey:
        return self.identity().public_key()

    def kek(self) -> bytes:
        """The site's 256-bit key-encryption key. Only the site's key service should call this."""
        path = self.directory / KEK_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{path}: key-encryption key missing; only sites hold one") from None
        if len(data) != KEK_BYTES:
            raise IntegrityError(f"{path}: key-encryption key has {len(data)} bytes, expected {KEK_BYTES}")
        return data

    # -- per-resource key-encryption keys (sites only): datasets and models -----------------------

    def _key_path(self, kind: str, name: str) -> Path:
        folder = RESOURCE_FOLDERS.get(kind)
        if folder is None:
            raise ValidationError(f"no key custody for a {kind!r}; use one of {', '.join(RESOURCE_FOLDERS)}")
        return self.directory / folder / f"{check_resource_name(name, kind)}.key"

    def has_key(self, kind: str, name: str) -> bool:
        return self._key_path(kind, name).exists()

    def create_key(self, kind: str, name: str) -> bytes:
        """Generate and keep the key-encryption key of ``kind`` ``name`` here; refuses an existing one."""
        key = secrets.token_bytes(KEK_BYTES)
        _write_secret(self._key_path(kind, name), key)
        return key

    def import_key(self, kind: str, name: str, key: bytes) -> None:
        """Keep ``key`` (received sealed to this site, e.g. a dataset copied here with its ciphertext
        unchanged) as the key of ``kind`` ``name``; refuses an existing one or a key of another size."""
        if len(key) != KEK_BYTES:
            raise IntegrityError(f"a {kind} key has {KEK_BYTES} bytes, not {len(key)}")
        _write_secret(self._key_path(kind, name), key)

    def key(self, kind: str, name: str) -> bytes:
        """The key-encryption key of ``kind`` ``name`` at this site. Only the site's key service calls this.

        Raises NotFoundError when there is none: the dataset or model was never placed here, or its
        key was destroyed on withdrawal (then no backup of the catalog can open its data here).
        """
        path = self._key_path(kind, name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(Message(
                N_("{path}: no key for {kind} {name!r} in this site's custody; it was never placed here "
                   "or its key was destroyed when consent was withdrawn"),
                {"path": path, "kind": kind, "name": name})) from None
        if len(data) != KEK_BYTES:
            raise IntegrityError(f"{path}: {kind} key has {len(data)} bytes, expected {KEK_BYTES}")
        return data

    def destroy_key(self, kind: str, name: str) -> bool:
        """Overwrite and delete the key of ``kind`` ``name`` here (crypto-shredding); True if one existed.

        The bytes are overwritten and synced before the unlink, and the folder is synced after, so
        that neither the old key nor its directory entry survive a crash. Copies of the custody
        folder made earlier (a backup of the site's keys) are out of reach: see the threat model.
        """
        path = self._key_path(kind, name)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEK_BYTES))
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def wrap(self, kind: str, name: str, data_key: bytes, context: bytes) -> bytes:
        """``data_key`` wrapped under the key of ``kind`` ``name`` (AES-256-GCM bound to ``context``).

        The one way callers wrap: a PKCS#11 store (``keys/pkcs11store.py``) does this in its token.
        """
        from onshore.keys.envelope import wrap_key
        return wrap_key(self.key(kind, name), data_key, context)

    def unwrap(self, kind: str, name: str, wrapped: bytes, context: bytes) -> bytes:
        """Inverse of :meth:`wrap`; NotFoundError without the key, IntegrityError when the wrap does not open."""
        from onshore.keys.envelope import unwrap_key
        return unwrap_key(self.key(kind, name), wrapped, context)

    # The dataset spellings that the key service and other layers use (the same files as above).

    def has_dataset_key(self, dataset: str) -> bool:
        return self.has_key("dataset", dataset)

    def create_dataset_key(self, dataset: str) -> bytes:
        return self.create_key("dataset", dataset)

    def dataset_key(self, dataset: str) -> bytes:
        return self.key("dataset", dataset)

    def destroy_dataset_key(self, dataset: str) -> bool:
        return self.destroy_key("dataset", dataset)
