"""`ledger prove`, `ledger consistency` and cosignature merging, checked with the verifiers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from onshore.cli.app import main
from onshore.errors import ValidationError
from onshore.ledger import checkpoint as ckpt
from onshore.ledger import merkle
from onshore.ledger.witness import Witness
from onshore.workspace import Workspace, registry


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def _b(s: str) -> bytes:
    return base64.b64decode(s)


def test_prove_and_consistency_outputs_verify(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    w = str(ws.root)
    size = ws.ledger.size()
    p = _json(capsys, "-w", w, "ledger", "prove", "2", "--size", str(size - 1), "--json")
    assert p["size"] == size - 1 and p["entry"]["kind"] == "site.add"
    merkle.verify_inclusion(2, size - 1, _b(p["leaf_hash"]), [_b(h) for h in p["proof"]], _b(p["root"]))
    c = _json(capsys, "-w", w, "ledger", "consistency", "3", str(size), "--json")
    merkle.verify_consistency(3, size, _b(c["old_root"]), _b(c["new_root"]), [_b(h) for h in c["proof"]])
    assert c["new_root"] == base64.b64encode(ws.ledger.root()).decode()
    # one encoding for a root everywhere: verify prints what a checkpoint's third line carries
    v = _json(capsys, "-w", w, "ledger", "verify", "--json")
    assert v["root"] == c["new_root"] == ws.make_checkpoint().splitlines()[2]
    assert main(["-w", w, "ledger", "prove", str(size + 5)]) == 1
    assert "not in a tree of size" in capsys.readouterr().err


def test_cosignatures_merge_only_onto_our_own_tree(ws: Workspace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    witness = Witness.init("w1", tmp_path / "w1")
    registry.add_witness(ws, "w1", witness.vkey)
    note = ws.make_checkpoint()
    cosigned = witness.cosign(note, ws.log_vkey, [])
    f = tmp_path / "cosigned.txt"
    f.write_text(cosigned)
    assert main(["-w", str(ws.root), "ledger", "checkpoint", "--add-cosigned", str(f)]) == 0
    stored = ws.ledger.checkpoint_note()
    assert stored is not None and ckpt.verify_cosignatures(stored, [witness.vkey]) == ["w1"]
    # a head the log signed for a different root (a fork) is refused, and nothing is stored
    cp = ckpt.verify_checkpoint(note, ws.log_vkey)
    forged = ckpt.sign_checkpoint(ckpt.Checkpoint(cp.origin, cp.size, b"\x00" * 32), ws.origin, ws.signer("log"))
    with pytest.raises(ValidationError, match="does not match this ledger's tree"):
        ws.add_cosignatures(forged)
    assert ws.ledger.checkpoint_note() == stored
    assert main(["-w", str(ws.root), "ledger", "checkpoint", "--add-cosigned", str(tmp_path / "nope.txt")]) == 1
    assert "no such cosigned checkpoint file" in capsys.readouterr().err
