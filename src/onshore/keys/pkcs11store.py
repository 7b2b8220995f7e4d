"""Key custody in a PKCS#11 token (an HSM, a cloud HSM, or SoftHSM2): keys that cannot be copied.

A site whose key folder holds ``custody.toml`` with ``custody = "pkcs11"`` keeps its key-encryption
keys in a token instead of files::

    custody = "pkcs11"
    module = "/usr/lib/softhsm/libsofthsm2.so"   # the vendor's PKCS#11 library
    token_label = "onshore-hospital-a"
    pin_env = "ONSHORE_PIN_HOSPITAL_A"            # or: pin_file = "/run/secrets/pin" (one line)

The PIN is read from the named environment variable or file, never from the command line or the
catalog. Inside the token: the site's key-encryption key (label ``onshore:site-kek``) and one per
dataset and per model artifact (``onshore:dataset:NAME``, ``onshore:model:NAME``), all AES-256,
generated in the token with ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false: no PKCS#11 call
returns their value. Data keys are wrapped by AES-GCM *in the token* (nonce || ciphertext || tag,
the context as associated data, the same bytes as :mod:`onshore.keys.envelope`), and unwrapped
there (as a KMS ``Decrypt`` does); the plain data key exists only in the reading process's memory.
Withdrawal destroys the token object (``C_DestroyObject``), so a byte-for-byte copy of the
workspace taken before it no longer opens anything; a copy of the token itself (SoftHSM's token
folder) is out of scope, as a hardware HSM does not allow one (``docs/threat-model.md``).

The site's Ed25519 identity stays in the file store (``identity.pem``): SoftHSM2 supports
``CKM_EDDSA``, but python-pkcs11 0.10 has no Ed25519 public-key export to the raw form the ledger
registers, so moving it is left for later (``docs/custody.md``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onshore.errors import IntegrityError, NotFoundError, OnshoreError, ValidationError
from onshore.keys.keystore import RESOURCE_FOLDERS, KeyStore
from onshore.names import check_resource_name

CUSTODY_FILE = "custody.toml"
SITE_KEK_LABEL = "onshore:site-kek"
_NONCE = 12


@dataclass(frozen=True)
class CustodyConfig:
    """Where a site's token is and how its PIN is found (``custody.toml`` in the site's key folder)."""

    module: str
    token_label: str
    pin_env: str | None = None
    pin_file: str | None = None

    @classmethod
    def read(cls, path: Path) -> CustodyConfig | None:
        """The PKCS#11 custody of ``path``, None when the file is absent or says ``custody = "file"``.

        Refuses (ValidationError naming the file and field) bad TOML, an unknown custody, a missing
        module or token label, and a PIN given inline or by neither ``pin_env`` nor ``pin_file``.
        """
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValidationError(f"{path}: not valid TOML ({e}); fix or remove the file") from None
        custody = data.get("custody", "file")
        if custody == "file":
            return None
        if custody != "pkcs11":
            raise ValidationError(f"{path}: custody = {custody!r}; use \"file\" or \"pkcs11\"")
        if "pin" in data:
            raise ValidationError(f"{path}: a PIN is never written in the custody file; name pin_env or pin_file")
        for field in ("module", "token_label"):
            if not isinstance(data.get(field), str) or not data[field]:
                raise ValidationError(f"{path}: field {field!r} is missing or not a string")
        pin_env, pin_file = data.get("pin_env"), data.get("pin_file")
        if (pin_env is None) == (pin_file is None) or not isinstance(pin_env or pin_file, str):
            raise ValidationError(f"{path}: give exactly one of pin_env (an environment variable's name) "
                                  "or pin_file (a file holding the PIN)")
        return cls(data["module"], data["token_label"], pin_env, pin_file)

    def write(self, path: Path) -> None:
        lines = ['custody = "pkcs11"', f'module = "{self.module}"', f'token_label = "{self.token_label}"']
        lines.append(f'pin_env = "{self.pin_env}"' if self.pin_env else f'pin_file = "{self.pin_file}"')
        for value in (self.module, self.token_label, self.pin_env or self.pin_file or ""):
            if '"' in value or "\\" in value or "\n" in value:
                raise ValidationError(f"custody setting {value!r}: quotes, backslashes and newlines are not allowed")
        path.write_text("\n".join(lines) + "\n")

    def pin(self) -> str:
        """The token PIN from the environment variable or file; refuses when it is not there."""
        if self.pin_env is not None:
            value = os.environ.get(self.pin_env)
            if not value:
                raise ValidationError(f"the token PIN is read from environment variable {self.pin_env}, "
                                      "which is not set; set it before running Onshore")
            return value
        assert self.pin_file is not None
        try:
            return Path(self.pin_file).read_text().strip()
        except OSError as e:
            raise ValidationError(f"the token PIN file {self.pin_file} cannot be read ({e.strerror})") from None


_LIBS: dict[str, Any] = {}


def _lib(module: str) -> Any:
    import pkcs11  # optional extra: onshore[pkcs11]
    real = os.path.realpath(module)  # one library object per shared object, whatever path names it
    lib = _LIBS.get(real)
    if lib is None:
        if not Path(module).is_file():
            raise OnshoreError(f"PKCS#11 module {module} not found; install the vendor's library (for SoftHSM2: "
                               "apt-get install softhsm2) or fix 'module' in the site's custody.toml")
        try:
            lib = _LIBS[real] = pkcs11.lib(real)
        except (RuntimeError, OSError, pkcs11.PKCS11Error) as e:
            raise OnshoreError(f"PKCS#11 module {module} does not load ({e}); is it a PKCS#11 library?") from None
    return lib


_SESSIONS: dict[tuple[str, str], Any] = {}


def reset() -> None:
    """Close every session and finalise every loaded module, as a new process would start.

    A token is logged in once per process (PKCS#11 login is per application), so sessions are
    shared by every key store of the process; tests that make new tokens call this between them.
    """
    for session in _SESSIONS.values():
        try:
            session.close()
        except Exception:  # noqa: BLE001 -- a session already gone
            pass
    _SESSIONS.clear()
    for lib in _LIBS.values():
        lib.reinitialize()


def open_session(config: CustodyConfig) -> Any:
    """A read-write, logged-in session on the configured token (one per token and process); clear
    OnshoreErrors for a missing library or module, an unknown token, and a missing or wrong PIN."""
    session = _SESSIONS.get((config.module, config.token_label))
    if session is None:
        session = _SESSIONS[(config.module, config.token_label)] = _login(config)
    return session


def _login(config: CustodyConfig) -> Any:
    try:
        import pkcs11
    except ImportError:
        raise OnshoreError("PKCS#11 custody needs python-pkcs11: pip install 'onshore[pkcs11]'") from None
    lib = _lib(config.module)
    try:
        token = lib.get_token(token_label=config.token_label)
    except pkcs11.NoSuchToken:
        raise OnshoreError(f"no token labelled {config.token_label!r} in PKCS#11 module {config.module}; "
                           "initialise it (softhsm2-util --init-token) or fix token_label") from None
    except pkcs11.MultipleTokensReturned:
        raise OnshoreError(f"several tokens are labelled {config.token_label!r}; give each site its own") from None
    try:
        return token.open(rw=True, user_pin=config.pin())
    except pkcs11.PinIncorrect:
        raise OnshoreError(f"token {config.token_label!r}: the PIN is incorrect (from "
                           f"{'$' + config.pin_env if config.pin_env else config.pin_file})") from None
    except pkcs11.PinLocked:
        raise OnshoreError(f"token {config.token_label!r}: the user PIN is locked; the security officer must "
                           "reset it") from None
    except pkcs11.PKCS11Error as e:
        raise OnshoreError(f"token {config.token_label!r}: cannot log in ({type(e).__name__})") from None


class Pkcs11KeyStore(KeyStore):
    """A site's key store whose key-encryption keys live in a PKCS#11 token (identity stays a file).

    Same methods as :class:`KeyStore`, except that :meth:`key` and :meth:`kek` refuse (no key ever
    leaves the token): callers wrap and unwrap with :meth:`wrap` and :meth:`unwrap`.
    """

    def __init__(self, directory: Path, config: CustodyConfig) -> None:
        super().__init__(directory)
        self.config = config
        self._session: Any = None
        self._keys: dict[str, Any] = {}

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = open_session(self.config)
        return self._session

    @staticmethod
    def label(kind: str, name: str) -> str:
        if kind not in RESOURCE_FOLDERS:
            raise ValidationError(f"no key custody for a {kind!r}; use one of {', '.join(RESOURCE_FOLDERS)}")
        return f"onshore:{kind}:{check_resource_name(name, kind)}"

    def serial(self) -> str:
        """The token's serial number, recorded in the ledger beside destroyed keys."""
        return str(self.session.token.serial.decode() if isinstance(self.session.token.serial, bytes)
                   else self.session.token.serial).strip()

    def _find(self, label: str) -> Any | None:
        from pkcs11 import Attribute, ObjectClass
        key = self._keys.get(label)
        if key is not None:
            return key
        found = list(self.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
        if len(found) > 1:
            raise IntegrityError(f"token {self.config.token_label!r} holds {len(found)} keys labelled {label!r}")
        if found:
            self._keys[label] = found[0]
            return found[0]
        return None

    def _generate(self, label: str) -> Any:
        from pkcs11 import Attribute, KeyType
        key = self.session.generate_key(KeyType.AES, 256, label=label, store=True, template={
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TOKEN: True,
            Attribute.PRIVATE: True, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
            Attribute.WRAP: False, Attribute.UNWRAP: False, Attribute.DERIVE: False})
        self._keys[label] = key
        return key

    def ensure_site_kek(self) -> None:
        """Generate the site's key-encryption key in the token if it is not there yet."""
        if self._find(SITE_KEK_LABEL) is None:
            self._generate(SITE_KEK_LABEL)

    def kek(self) -> bytes:
        raise OnshoreError("this site's key-encryption key lives in a PKCS#11 token and never leaves it")

    def key(self, kind: str, name: str) -> bytes:
        raise OnshoreError(f"the key of {kind} {name!r} lives in a PKCS#11 token and never leaves it; "
                           "use wrap/unwrap")

    def has_key(self, kind: str, name: str) -> bool:
        return self._find(self.label(kind, name)) is not None

    def create_key(self, kind: str, name: str) -> bytes:
        """Generate the token key of ``kind`` ``name`` (sensitive, non-extractable); refuses an existing one.

        Returns b"" (no key material leaves the token)."""
        label = self.label(kind, name)
        if self._find(label) is not None:
            raise ValidationError(f"token {self.config.token_label!r} already holds a key labelled {label!r}; "
                                  "keys are never overwritten")
        self._generate(label)
        return b""

    def handle(self, kind: str, name: str) -> Any | None:
        """The token object of ``kind`` ``name`` (for its attributes), or None."""
        return self._find(self.label(kind, name))

    def destroy_key(self, kind: str, name: str) -> bool:
        """Destroy the token object of ``kind`` ``name`` (C_DestroyObject); True if one existed."""
        label = self.label(kind, name)
        key = self._find(label)
        if key is None:
            return False
        key.destroy()
        self._keys.pop(label, None)
        return True

    def _key_or_missing(self, kind: str, name: str) -> Any:
        key = self._find(self.label(kind, name))
        if key is None:
            raise NotFoundError(
                f"token {self.config.token_label!r}: no key for {kind} {name!r}; it was never placed at this site "
                "or its key was destroyed when consent was withdrawn")
        return key

    def wrap(self, kind: str, name: str, data_key: bytes, context: bytes) -> bytes:
        """``data_key`` encrypted in the token under the key of ``kind`` ``name`` (AES-GCM, ``context`` as AAD)."""
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams
        nonce = os.urandom(_NONCE)
        ct = self._key_or_missing(kind, name).encrypt(
            data_key, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, context))
        return nonce + bytes(ct)

    def unwrap(self, kind: str, name: str, wrapped: bytes, context: bytes) -> bytes:
        """Inverse of :meth:`wrap`, in the token; IntegrityError when the key, context or bytes differ."""
        import pkcs11
        from pkcs11.mechanisms import GCMParams
        key = self._key_or_missing(kind, name)
        try:
            return bytes(key.decrypt(wrapped[_NONCE:], mechanism=pkcs11.Mechanism.AES_GCM,
                                     mechanism_param=GCMParams(wrapped[:_NONCE], context)))
        except (pkcs11.PKCS11Error, pkcs11.ArgumentsBad):
            raise IntegrityError(
                f"wrapped key does not open in token {self.config.token_label!r} for context "
                f"{context.decode(errors='replace')!r}: wrong key, tampered wrap, or a wrap from another dataset"
            ) from None


def open_keystore(directory: Path) -> KeyStore:
    """The key store of the custody folder ``directory``: PKCS#11 when its ``custody.toml`` says so."""
    config = CustodyConfig.read(Path(directory) / CUSTODY_FILE)
    return KeyStore(directory) if config is None else Pkcs11KeyStore(directory, config)
