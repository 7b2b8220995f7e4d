"""The standalone witness: cosigns only checkpoints consistent with what it cosigned before."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onshore.errors import IntegrityError, NotFoundError, PolicyDenied, ValidationError
from onshore.ledger import checkpoint as ck
from onshore.ledger import notes
from onshore.ledger.merkle import MemoryNodeStore, consistency_proof
from onshore.ledger.witness import Witness

ORIGIN = "example.com/onshore-log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG_VKEY = notes.encode_verifier_key(ORIGIN, LOG_KEY.public_key())


class Log:
    """A tiny honest log (or, with a different prefix, a forked one)."""

    def __init__(self, prefix: bytes = b"", origin: str = ORIGIN, key: Ed25519PrivateKey = LOG_KEY) -> None:
        self.store = MemoryNodeStore()
        self.prefix = prefix
        self.origin, self.key = origin, key
        self.vkey = notes.encode_verifier_key(origin, key.public_key())

    def grow_to(self, n: int, fork_after: int | None = None) -> Log:
        while self.store.size < n:
            i = self.store.size
            tag = b"fork" if fork_after is not None and i >= fork_after else b""
            self.store.append(tag + b"entry %d" % i)
        return self

    def checkpoint(self, size: int | None = None) -> str:
        size = self.store.size if size is None else size
        return ck.sign_checkpoint(ck.Checkpoint(self.origin, size, self.store.root(size)), self.origin, self.key)

    def proof(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(old, new, self.store.get) if 0 < old < new else []


@pytest.fixture()
def witness(tmp_path: Path) -> Witness:
    return Witness.init("witness.example/w1", tmp_path / "w")


def test_init_creates_private_key_and_state(tmp_path: Path) -> None:
    w = Witness.init("witness.example/w1", tmp_path / "w")
    key = tmp_path / "w" / "witness.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert json.loads((tmp_path / "w" / "state.json").read_text())["logs"] == {}
    again = Witness.open(tmp_path / "w")
    assert again.vkey == w.vkey and again.name == "witness.example/w1"
    assert notes.parse_verifier_key(w.vkey, notes.SIG_COSIGNATURE_V1).name == w.name
    with pytest.raises(ValidationError, match="already holds a witness"):
        Witness.init("witness.example/w1", tmp_path / "w")
    with pytest.raises(NotFoundError):
        Witness.open(tmp_path / "nowhere")


def test_cosigns_a_growing_log(witness: Witness) -> None:
    log = Log().grow_to(5)
    note = witness.cosign(log.checkpoint(), LOG_VKEY, [], timestamp=100)
    assert ck.verify_cosignatures(note, [witness.vkey]) == [witness.name]
    assert ck.verify_checkpoint(note, LOG_VKEY).size == 5
    log.grow_to(13)
    note = witness.cosign(log.checkpoint(), LOG_VKEY, log.proof(5, 13), timestamp=101)
    assert ck.verified_cosignatures(note, [witness.vkey])[0].timestamp == 101
    # The same checkpoint again is fine (idempotent), with an empty proof.
    witness.cosign(log.checkpoint(), LOG_VKEY, [], timestamp=102)
    assert witness.logs()[ORIGIN].size == 13


def test_survives_reopen(tmp_path: Path) -> None:
    w = Witness.init("w", tmp_path / "w")
    log = Log().grow_to(3)
    w.cosign(log.checkpoint(), LOG_VKEY, [])
    w2 = Witness.open(tmp_path / "w")
    log_fork = Log().grow_to(4, fork_after=1)
    with pytest.raises(PolicyDenied):
        w2.cosign(log_fork.checkpoint(), LOG_VKEY, log_fork.proof(3, 4))


def test_refuses_split_view_same_size(witness: Witness) -> None:
    honest, forked = Log().grow_to(8), Log().grow_to(8, fork_after=6)
    witness.cosign(honest.checkpoint(), LOG_VKEY, [])
    with pytest.raises(PolicyDenied, match="different root hash") as e:
        witness.cosign(forked.checkpoint(), LOG_VKEY, [])
    assert e.value.exit_code == 3
    assert witness.logs()[ORIGIN].root_hash == honest.store.root()


def test_refuses_fork_at_larger_size(witness: Witness) -> None:
    honest, forked = Log().grow_to(6), Log().grow_to(10, fork_after=4)
    witness.cosign(honest.checkpoint(), LOG_VKEY, [])
    # The forked log's own proof from 6 is a proof about *its* size-6 tree, not the one cosigned.
    with pytest.raises(PolicyDenied, match="fork"):
        witness.cosign(forked.checkpoint(), LOG_VKEY, forked.proof(6, 10))
    with pytest.raises(PolicyDenied, match="fork"):
        witness.cosign(forked.checkpoint(), LOG_VKEY, [])
    assert witness.logs()[ORIGIN].size == 6


def test_refuses_rollback(witness: Witness) -> None:
    log = Log().grow_to(9)
    witness.cosign(log.checkpoint(), LOG_VKEY, [])
    with pytest.raises(PolicyDenied, match="smaller"):
        witness.cosign(log.checkpoint(4), LOG_VKEY, [])


def test_refuses_bad_log_signature_and_other_log_key(witness: Witness) -> None:
    log = Log().grow_to(3)
    other_key = Ed25519PrivateKey.generate()
    fake = ck.sign_checkpoint(ck.Checkpoint(ORIGIN, 3, log.store.root()), ORIGIN, other_key)
    with pytest.raises(IntegrityError):
        witness.cosign(fake, LOG_VKEY, [])
    assert witness.logs() == {}
    witness.cosign(log.checkpoint(), LOG_VKEY, [])
    other_vkey = notes.encode_verifier_key(ORIGIN, other_key.public_key())
    log.grow_to(4)
    with pytest.raises(PolicyDenied, match="another log key"):
        witness.cosign(
            ck.sign_checkpoint(ck.Checkpoint(ORIGIN, 4, log.store.root()), ORIGIN, other_key),
            other_vkey,
            log.proof(3, 4),
        )


def test_state_unchanged_after_refusal_and_written_atomically(witness: Witness) -> None:
    log = Log().grow_to(4)
    witness.cosign(log.checkpoint(), LOG_VKEY, [])
    state_path = witness.directory / "state.json"
    before = state_path.read_bytes()
    with pytest.raises(PolicyDenied):
        witness.cosign(Log().grow_to(4, fork_after=0).checkpoint(), LOG_VKEY, [])
    assert state_path.read_bytes() == before
    assert not [p for p in witness.directory.iterdir() if p.name.endswith(".tmp")]
    assert stat.S_IMODE(os.stat(state_path).st_mode) == 0o600


def test_first_checkpoint_of_empty_log_then_growth(witness: Witness) -> None:
    log = Log()
    witness.cosign(log.checkpoint(), LOG_VKEY, [])
    log.grow_to(3)
    witness.cosign(log.checkpoint(), LOG_VKEY, [])
    assert witness.logs()[ORIGIN].size == 3
