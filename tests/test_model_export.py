"""An exported model folder loads where its policy allows, and nowhere else (issue 21, section 1).

`onshore model export` writes the weights, the card and a manifest; `onshore eval --policy ./FOLDER`
and `onshore serve --from ./FOLDER` check every file against the manifest and the signed ledger,
then decide the use as for the model by name; the card's plain-PyTorch snippet computes what
Onshore's own policy acts. Real tiny models, the real Meta-World simulator, a real websocket server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _training import fast, make_consortium
from onshore.cli.app import main
from onshore.errors import IntegrityError, NotFoundError, PolicyDenied, ValidationError
from onshore.model.policy import ModelPolicy
from onshore.serve import envelope as E
from onshore.serve import service, tokens
from onshore.serve.client import Client
from onshore.serve.plant import free_port
from onshore.train.loop import TrainRequest, train
from onshore.workspace import Workspace, datasets, exportfolder, modelcard, models, versions
from onshore.workspace.registry import get_embodiment

EMB = "sawyer-metaworld"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # child processes import this tree


@pytest.fixture
def exported(tmp_path: Path, telemetry: dict[str, Path]) -> Iterator[tuple[Workspace, Path]]:
    """pool (tiny, a few steps on arms + plant at sakai), exported at sakai for fine-tuning to tmp/pool-export."""
    ws = make_consortium(tmp_path, telemetry)
    train(ws, TrainRequest("pool", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                           train=fast(4, checkpoint_every=4)))
    folder = tmp_path / "pool-export"
    models.export_model(ws, "pool", "sakai", folder, "fine-tuning")
    yield ws, folder
    ws.close()


def _cli(ws: Workspace, cwd: Path, *args: str) -> int:
    old = os.getcwd()
    os.chdir(cwd)  # the folder is named as a person would: ./pool-export
    try:
        return main(["-w", str(ws.root), *args])
    finally:
        os.chdir(old)


def _wait_healthy(proc: subprocess.Popen[str], port: int) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.communicate(timeout=30)[1]) from None
            time.sleep(0.3)


def test_an_export_evaluates_serves_and_loads_in_plain_pytorch(exported: tuple[Workspace, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ws, folder = exported
    root = folder.parent
    manifest = json.loads((folder / exportfolder.MANIFEST).read_text())
    release = models.release_entry(ws, "pool")
    export_entry = ws.ledger.get(manifest["export_index"]).entry
    assert sorted(p.name for p in folder.iterdir()) == sorted((*exportfolder.FILES, exportfolder.MANIFEST))
    assert (manifest["model"], manifest["release_index"]) == ("pool", models.get_model(ws, "pool")["ledger_index"])
    assert export_entry.kind == "model.export" and export_entry.body["card"] == manifest["files"]["README.md"]
    assert {k: manifest["files"][k] for k in release["files"]} == release["files"]

    # eval --policy ./pool-export at tokyo (JP, which does not hold the model's sealed files): decided as a
    # read of the model there, run in the real simulator, and recorded naming the folder
    size = ws.ledger.size()
    # (two worker processes: each reads the folder itself and checks it against the ledger's digests)
    assert _cli(ws, root, "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "2", "--seed", "5",
                "--workers", "2", "--policy", "./pool-export", "--site", "tokyo", "--json") == 0
    from_folder = json.loads(capsys.readouterr().out)
    new = list(ws.ledger.entries(size, ws.ledger.size()))
    decision = next(e.entry for e in new if e.entry.kind == "decision")
    req = decision.body["request"]
    assert (req["action"], req["model"], req["site"], decision.body["decision"]) == ("read", "pool", "tokyo", "allow")
    assert not any(e.entry.kind == "key.release" for e in new)  # a plaintext copy: no key to release
    recorded = next(e.entry.body for e in new if e.entry.kind == "model.eval")
    assert (recorded["model"], recorded["site"], recorded["export"]) == ("pool", "tokyo", str(folder.resolve()))
    assert from_folder["tasks"]["reach-v3"]["episodes"] == 2
    # the same model by name (at sakai, which holds it), same seed: the same episodes, figure for figure
    assert main(["-w", str(ws.root), "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "2",
                 "--seed", "5", "--workers", "1", "--policy", "pool", "--site", "sakai", "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert from_folder["tasks"] == by_name["tasks"]

    # the card's "Load it in plain PyTorch" snippet, in a fresh interpreter in the folder: the action
    # Onshore's own policy gives for the same state and task
    card = (folder / "README.md").read_text()
    snippet = card.split(modelcard.LOAD_HEADING, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = snippet + "\nprint(json.dumps({'embodiment': embodiment, 'task': task, 'action': action.tolist()}))\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=300,
                         env=ENV)
    assert out.returncode == 0, out.stderr
    plain = json.loads(out.stdout.strip().splitlines()[-1])
    loaded, _ = models.load_export_for(ws, folder, "tokyo", "read", "fine-tuning")
    own = ModelPolicy(loaded, plain["embodiment"])
    own.reset(plain["task"])
    spec = loaded.model.specs[plain["embodiment"]]
    expected = own.act(np.zeros(spec.state_dim, dtype=np.float32))
    assert plain["embodiment"] == EMB and len(plain["action"]) == spec.action_dim
    np.testing.assert_allclose(plain["action"], expected, rtol=0, atol=1e-6)

    # serve --from ./pool-export at tokyo, as its own process: one act over the real client
    tok = tokens.issue(ws, "tokyo", "line-1")
    port = free_port()
    size = ws.ledger.size()
    proc = subprocess.Popen([sys.executable, "-m", "onshore", "-w", str(ws.root), "serve", "--from", "./pool-export",
                             "--site", "tokyo", "--port", str(port)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert _wait_healthy(proc, port)["model"] == "pool"
        state = np.linspace(-0.2, 0.3, spec.state_dim).astype(np.float32)
        with Client(f"ws://127.0.0.1:{port}", tok, EMB) as c:
            c.reset(plain["task"])
            served_action = c.act(state)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "1 action(s)" in stdout and "serving pool from pool-export" in stderr
    own = ModelPolicy(loaded, EMB)
    own.reset(plain["task"])
    envelope = E.Envelope(E.Limits.from_embodiment(get_embodiment(ws, EMB)))
    np.testing.assert_allclose(served_action, envelope.command(own.act(state), now=0.0).action, rtol=1e-5,
                               atol=1e-5)
    start = next(e.entry.body for e in ws.ledger.entries(size, ws.ledger.size(), kinds=("model.serve",))
                 if e.entry.body["event"] == "start")
    assert (start["model"], start["export"], start["follows"]) == ("pool", str(folder.resolve()), False)
    assert start["digest"] == release["files"]["model.safetensors"]


def _copy(folder: Path, name: str) -> Path:
    dest = folder.parent / name
    shutil.copytree(folder, dest)
    return dest


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    path = folder / exportfolder.MANIFEST
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_an_altered_or_foreign_export_is_refused_before_anything_is_decided(exported: tuple[Workspace, Path],
                                                                            tmp_path: Path) -> None:
    ws, folder = exported
    size = ws.ledger.size()
    # each case: the folder, what is refused, the words that say why
    cases: list[tuple[Path, type[Exception], str]] = []

    tampered = _copy(folder, "tampered")  # one bit of the weights
    raw = bytearray((tampered / "model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tampered / "model.safetensors").write_bytes(bytes(raw))
    cases.append((tampered, IntegrityError, "differs from the recorded"))

    forged = _copy(tampered, "forged")  # ...and the manifest made to agree with it: the ledger does not
    doc = json.loads((forged / exportfolder.MANIFEST).read_text())
    doc["files"]["model.safetensors"] = hashlib.sha256(raw).hexdigest()
    (forged / exportfolder.MANIFEST).write_text(json.dumps(doc))
    cases.append((forged, IntegrityError, "differ from the model.release ledger entry"))

    card = _copy(folder, "card")  # the card edited
    (card / "README.md").write_text((card / "README.md").read_text() + "\nUse it anywhere.\n")
    cases.append((card, IntegrityError, "README.md: SHA-256"))

    ghost = _copy(folder, "ghost")  # a model this workspace never released
    _rewrite_manifest(ghost, model="ghost")
    cases.append((ghost, NotFoundError, "never released"))

    moved = _copy(folder, "moved")  # a release index that is not the model's release
    _rewrite_manifest(moved, release_index=0)
    cases.append((moved, IntegrityError, "cites ledger entry 0 as the release"))

    unexported = _copy(folder, "unexported")  # an export index that is no export of these files
    _rewrite_manifest(unexported, export_index=models.get_model(ws, "pool")["ledger_index"])
    cases.append((unexported, IntegrityError, "which is not the model.export"))

    extra = _copy(folder, "extra")  # a file that is not part of an export
    (extra / "loader.py").write_text("import os\n")
    cases.append((extra, IntegrityError, "'loader.py', which is not part of an export"))

    linked = _copy(folder, "linked")  # a symbolic link, even to identical bytes
    outside = tmp_path / "model.json"
    shutil.copy(linked / "model.json", outside)
    (linked / "model.json").unlink()
    (linked / "model.json").symlink_to(outside)
    cases.append((linked, IntegrityError, "'model.json' is a symbolic link"))

    link_folder = tmp_path / "link-to-export"
    link_folder.symlink_to(folder, target_is_directory=True)
    cases.append((link_folder, IntegrityError, "is a symbolic link; give the folder itself"))

    escape = _copy(folder, "escape")  # a manifest naming a file outside the folder
    doc = json.loads((escape / exportfolder.MANIFEST).read_text())
    doc["files"]["../pool-export/model.json"] = doc["files"].pop("model.json")
    (escape / exportfolder.MANIFEST).write_text(json.dumps(doc))
    cases.append((escape, IntegrityError, "is a path outside the folder"))

    unfinished = _copy(folder, "unfinished")  # no manifest: an export that did not finish
    (unfinished / exportfolder.MANIFEST).unlink()
    cases.append((unfinished, IntegrityError, "has no onshore-export.json"))

    for path, error, words in cases:
        before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
        with pytest.raises(error, match=words):
            models.export_policy_factory(ws, path, "tokyo", EMB)
        with pytest.raises(error, match=words):
            service.start(ws, None, "tokyo", port=0, export=path)
        assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == before, path
    # the command line says the same with exit 1, and nothing reached the ledger
    assert _cli(ws, tmp_path, "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                "--policy", "./tampered", "--site", "tokyo") == 1
    assert _cli(ws, tmp_path, "serve", "--from", "./extra", "--site", "tokyo", "--port", "0") == 1
    assert ws.ledger.size() == size
    # a bare name is a model reference, never a folder; MODEL and --from together are a usage error
    assert not exportfolder.is_folder_ref("pool-export") and exportfolder.is_folder_ref("./pool-export")
    assert _cli(ws, tmp_path, "serve", "pool", "--from", "./pool-export", "--site", "tokyo") == 2
    assert ws.ledger.size() == size


def test_an_export_is_refused_where_and_when_the_model_by_name_would_be(exported: tuple[Workspace, Path]) -> None:
    ws, folder = exported
    # a site outside the model's jurisdictions: refused (exit 3) naming each lineage dataset's rule;
    # the decision is recorded, as every decision is, and nothing else
    size = ws.ledger.size()
    with pytest.raises(PolicyDenied) as e:
        models.export_policy_factory(ws, folder, "ohio", EMB)
    assert {"model/pool/dataset/arms/jurisdictions", "model/pool/dataset/plant/jurisdictions"} <= set(e.value.rules)
    assert _cli(ws, folder.parent, "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                "--policy", "./pool-export", "--site", "ohio") == 3
    assert _cli(ws, folder.parent, "serve", "--from", "./pool-export", "--site", "ohio", "--port", "0") == 3
    # a site without the serve role: refused as serving the model by name is
    with pytest.raises(PolicyDenied, match="workspace/role-serve"):
        service.start(ws, None, "sakai", port=0, export=folder)
    assert [e.entry.kind for e in ws.ledger.entries(size, ws.ledger.size())] == ["decision"] * 4
    # an archived version is not served, from a folder either
    versions.archive(ws, "pool@1")
    with pytest.raises(ValidationError, match="archived"):
        service.start(ws, None, "tokyo", port=0, export=folder)
    versions.archive(ws, "pool@1", restore=True)
    # a withdrawal under stop-serving stops it, naming the withdrawn dataset, as for the model by name
    datasets.withdraw(ws, "arms", "arm-maker")
    with pytest.raises(PolicyDenied) as e:
        service.start(ws, None, "tokyo", port=0, export=folder)
    assert e.value.rules == ["model/pool/dataset/arms/withdrawn-stop-serving"]
    with pytest.raises(PolicyDenied) as by_name:
        models.load_model_for(ws, "pool", "tokyo", "serve", "fine-tuning")
    assert by_name.value.rules == e.value.rules
