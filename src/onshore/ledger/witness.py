"""A standalone checkpoint witness (c2sp.org/tlog-cosignature semantics) that needs no workspace.

A witness keeps, per log origin, the log's verifier key and the last checkpoint it cosigned. It
cosigns a new checkpoint only if the log signed it and it is consistent with that one (RFC 9162
§2.1.4 consistency proof), so two parties shown different histories (a split view) cannot both
get its cosignature. Its directory holds ``witness.key`` (Ed25519, PKCS#8 PEM, mode 0600) and
``state.json``, replaced atomically under a lock after each cosignature and before it is handed out.

Two ways in: :meth:`Witness.cosign` (the offline ``onshore witness cosign``, checking against the
witness's own latest size) and :meth:`Witness.add_checkpoint` (c2sp.org/tlog-witness, served by
``onshore witness serve``: the client names the old size it builds on, and each refusal is a
distinct error that the server maps to the protocol's HTTP status).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from onshore.errors import IntegrityError, NotFoundError, PolicyDenied, ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger.merkle import EMPTY_ROOT, ProofError, verify_consistency
from onshore.ledger.notes import NoteError, SignatureError, check_key_name, parse_verifier_key, split_note
from onshore.ledger.witness_wire import AddCheckpoint

KEY_FILE = "witness.key"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
STATE_VERSION = 1


class WitnessRefusal(PolicyDenied):
    """The witness will not cosign this checkpoint; the subclass says why (tlog-witness status)."""


class UnknownLog(WitnessRefusal):
    """The checkpoint's origin is not a log this witness follows (tlog-witness: 404)."""


class UntrustedSignature(WitnessRefusal):
    """No signature on the checkpoint verifies under the log key this witness trusts (403)."""


class OldSizeConflict(WitnessRefusal):
    """The client's old size is not the witness's latest cosigned size, ``size`` (409)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class RootConflict(WitnessRefusal):
    """Same size as the latest cosigned checkpoint but another root hash: a fork (409)."""


class InconsistentProof(WitnessRefusal):
    """The consistency proof does not show the checkpoint extends the latest cosigned one (422)."""


@dataclass(frozen=True)
class LogState:
    """The last checkpoint this witness cosigned for one log."""

    log_vkey: str
    size: int
    root_hash: bytes
    timestamp: int


def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    # Write beside the target and rename over it: a crash leaves the old state or the new one,
    # never half of one.
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Witness:
    """A witness bound to a directory; use :meth:`init` once, then :meth:`open`."""

    def __init__(self, directory: Path, name: str, key: Ed25519PrivateKey) -> None:
        self.directory = directory
        self.name = name
        self._key = key

    # --- lifecycle ---

    @classmethod
    def init(cls, name: str, directory: str | os.PathLike[str]) -> Witness:
        """Create a witness named ``name`` in ``directory``: a new key (0600) and empty state."""
        check_key_name(name)
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = d / KEY_FILE
        if key_path.exists() or (d / STATE_FILE).exists():
            raise ValidationError(f"{d} already holds a witness; open it instead of initialising")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        # O_EXCL: never overwrite a key that appeared meanwhile; 0600 from the first byte.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        w = cls(d, name, key)
        w._write_state({})
        return w

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Witness:
        """Open an existing witness directory."""
        d = Path(directory)
        key_path = d / KEY_FILE
        if not key_path.is_file() or not (d / STATE_FILE).is_file():
            raise NotFoundError(f"{d} is not a witness folder (no {KEY_FILE} and {STATE_FILE}); create one with "
                                f"'onshore witness init NAME --dir {d}'")
        try:
            key = load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError:
            raise IntegrityError(f"{key_path} is not a readable private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityError(f"{key_path} is not an Ed25519 key")
        name = cls._read_raw_state(d)["name"]
        return cls(d, name, key)

    @property
    def vkey(self) -> str:
        """The witness's C2SP verifier key (signature type 0x04) for clients' trust roots."""
        return ckpt.cosigner_verifier_key(self.name, self._key.public_key())

    # --- state ---

    @staticmethod
    def _read_raw_state(d: Path) -> dict[str, Any]:
        path = d / STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{path} is not readable witness state: {e}") from None
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION or "name" not in raw:
            raise IntegrityError(f"{path} is not witness state version {STATE_VERSION}")
        return raw

    def logs(self) -> dict[str, LogState]:
        """Per log origin, the last checkpoint cosigned."""
        raw = self._read_raw_state(self.directory)
        out = {}
        for origin, s in raw.get("logs", {}).items():
            out[origin] = LogState(s["log_vkey"], int(s["size"]), base64.b64decode(s["root"]), int(s["timestamp"]))
        return out

    def _write_state(self, logs: dict[str, LogState]) -> None:
        doc = {
            "version": STATE_VERSION,
            "name": self.name,
            "logs": {
                origin: {
                    "log_vkey": s.log_vkey,
                    "size": s.size,
                    "root": base64.b64encode(s.root_hash).decode("ascii"),
                    "timestamp": s.timestamp,
                }
                for origin, s in sorted(logs.items())
            },
        }
        _atomic_write(self.directory / STATE_FILE, json.dumps(doc, indent=2).encode() + b"\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One cosign at a time per directory, so that two racing requests cannot both extend
        # the same state to different trees.
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- the one job ---

    def cosign(
        self,
        checkpoint_note: str,
        log_vkey: str,
        consistency_proof: Sequence[bytes],
        *,
        timestamp: int | None = None,
    ) -> str:
        """Cosign a checkpoint if the log signed it and it extends what was cosigned before.

        ``consistency_proof`` goes from the last cosigned size for this origin to the new size
        (empty for the first checkpoint or the same size). Refuses, with :class:`PolicyDenied`
        (exit 3), a smaller tree (rollback), the same size with another root, or a tree the proof
        does not show to extend the old one (a fork); state changes only after success.
        """
        parse_verifier_key(log_vkey)
        cp = ckpt.verify_checkpoint(checkpoint_note, log_vkey)
        ts = int(time.time()) if timestamp is None else timestamp
        with self._locked():
            logs = self.logs()
            prev = logs.get(cp.origin)
            if prev is not None:
                self._check_extends(cp, prev, log_vkey, list(consistency_proof))
            note = ckpt.cosign(checkpoint_note, self.name, self._key, ts)
            logs[cp.origin] = LogState(log_vkey, cp.size, cp.root_hash, ts)
            self._write_state(logs)
        return note

    def trust_log(self, log_vkey: str, origin: str | None = None) -> LogState:
        """Follow a log: accept checkpoints of ``origin`` (default: the key's name) signed by ``log_vkey``.

        The witness starts at size 0 (it has cosigned nothing for this log yet). Following a log
        it already follows under the same key changes nothing; under another key it is refused
        (ValidationError): a key change needs a new witness state, not a silent switch.
        """
        verifier = parse_verifier_key(log_vkey)
        origin = verifier.name if origin is None else origin
        if not origin or "\n" in origin or any(ord(c) < 0x20 or c == "\x7f" for c in origin):
            raise ValidationError(f"log origin {origin[:60]!r} must be one line without control characters")
        with self._locked():
            logs = self.logs()
            known = logs.get(origin)
            if known is not None:
                if known.log_vkey != verifier.vkey():
                    raise ValidationError(f"this witness already follows log {origin} under another key "
                                          f"({known.log_vkey}); use a new witness folder for a new log key")
                return known
            logs[origin] = LogState(verifier.vkey(), 0, EMPTY_ROOT, 0)
            self._write_state(logs)
            return logs[origin]

    def add_checkpoint(self, request: AddCheckpoint, *, timestamp: int | None = None) -> str:
        """The tlog-witness ``add-checkpoint`` call: the cosignature line for ``request``'s checkpoint.

        Refuses, changing nothing: a log this witness does not follow (:class:`UnknownLog`), a
        checkpoint no trusted log key signed (:class:`UntrustedSignature`), an old size other than
        the latest size cosigned (:class:`OldSizeConflict`, carrying that size), the same size with
        another root (:class:`RootConflict`), a proof that does not verify
        (:class:`InconsistentProof`). The check of the old size and the new state are one step
        under the folder's lock, written to disk before the line is returned, so two concurrent
        requests cannot both advance from one size and a crash never forgets a cosigned size.
        """
        cp = request.checkpoint
        ts = int(time.time()) if timestamp is None else timestamp
        where = f"log {cp.origin}"
        with self._locked():
            logs = self.logs()
            prev = logs.get(cp.origin)
            if prev is None:
                raise UnknownLog(f"this witness does not follow {where}; its operator adds it with "
                                 "'onshore witness trust-log'")
            try:
                ckpt.verify_checkpoint(request.note, prev.log_vkey, cp.origin)
            except (SignatureError, NoteError) as e:
                raise UntrustedSignature(f"the checkpoint of {where} is not signed by the log key this witness "
                                         f"trusts ({prev.log_vkey}): {e}") from None
            if request.old_size != prev.size:
                raise OldSizeConflict(f"old size {request.old_size} is not the latest size cosigned for {where}, "
                                      f"{prev.size}", prev.size)
            if cp.size == prev.size:
                if cp.root_hash != prev.root_hash:
                    raise RootConflict(f"{where} at size {cp.size} has a different root hash from the checkpoint "
                                       "already cosigned at that size (fork / split view)")
            elif prev.size > 0:
                try:
                    verify_consistency(prev.size, cp.size, prev.root_hash, cp.root_hash, request.proof)
                except ProofError as e:
                    raise InconsistentProof(f"{where} at size {cp.size} is not shown consistent with the checkpoint "
                                            f"cosigned at size {prev.size}: {e}") from None
            text, _ = split_note(request.note)
            line = ckpt.cosignature(text, self.name, self._key, ts).line()
            logs[cp.origin] = LogState(prev.log_vkey, cp.size, cp.root_hash, ts)
            self._write_state(logs)
        return line

    def _check_extends(self, cp: ckpt.Checkpoint, prev: LogState, log_vkey: str, proof: list[bytes]) -> None:
        where = f"log {cp.origin}"
        if prev.log_vkey != log_vkey:
            raise PolicyDenied(
                f"refusing to cosign: {where} was witnessed under another log key ({prev.log_vkey});"
                " a key change needs a new witness state, not a silent switch"
            )
        if cp.size < prev.size:
            raise PolicyDenied(
                f"refusing to cosign: {where} at size {cp.size} is smaller than the size {prev.size}"
                " already cosigned (a log never shrinks: rollback or fork)"
            )
        if cp.size == prev.size:
            if cp.root_hash != prev.root_hash:
                raise PolicyDenied(
                    f"refusing to cosign: {where} at size {cp.size} has a different root hash from"
                    " the checkpoint already cosigned at that size (fork / split view)"
                )
            return
        if prev.size == 0:
            return  # every tree extends the empty tree; there is nothing to prove
        try:
            verify_consistency(prev.size, cp.size, prev.root_hash, cp.root_hash, proof)
        except ProofError as e:
            raise PolicyDenied(
                f"refusing to cosign: {where} at size {cp.size} is not shown consistent with the"
                f" checkpoint cosigned at size {prev.size} (possible fork / split view): {e}"
            ) from None
