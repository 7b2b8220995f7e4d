"""Training loses nothing and releases nothing it should not (issue 17, section 4): decisions before
keys, model options checked by a dry run, one run per model name, checkpoints released like models
and bound to their datasets, concurrent model copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _serving import MODEL, furnace_workspace
from _training import fast, interrupted_run, make_consortium
from onshore.cli.app import main
from onshore.errors import IntegrityError, PolicyDenied, ValidationError
from onshore.model.text import HASHED
from onshore.train.loop import TrainRequest, train
from onshore.workspace import Workspace, datasets, models, registry

PRETRAIN = "foundation-pretraining"


@pytest.fixture
def consortium(tmp_path: Path, telemetry: dict[str, Path]) -> Iterator[Workspace]:
    ws = make_consortium(tmp_path, telemetry)
    yield ws
    ws.close()


def entries_since(ws: Workspace, start: int) -> list[dict]:  # type: ignore[type-arg]
    return [{"kind": e.entry.kind, "index": e.index, **e.entry.body}
            for e in ws.ledger.entries(start, ws.ledger.size())]


def _folder(ws: Workspace, name: str, site: str = "sakai") -> Path:
    return Path(registry.get_site(ws, site).root) / "models" / name


def test_every_decision_comes_before_any_key_and_bad_options_change_nothing(consortium: Workspace) -> None:
    ws = consortium
    train(ws, TrainRequest("arm-base", "sakai", PRETRAIN, ("arms",), size="tiny", train=fast(2)))
    # the base is allowed at sakai, the dataset is not (arms-tokyo may sit only at tokyo): no key at all
    start = ws.ledger.size()
    with pytest.raises(PolicyDenied, match="arms-tokyo"):
        train(ws, TrainRequest("ft", "sakai", "fine-tuning", ("arms-tokyo",), size="tiny", base="arm-base",
                               train=fast(2)))
    got = entries_since(ws, start)
    assert [e["kind"] for e in got] == ["decision", "decision"]  # the base's, then the dataset's
    assert got[0]["request"].get("model") == "arm-base" and got[1]["request"].get("dataset") == "arms-tokyo"
    # the base refused (US site) and its datasets too: one refusal naming every rule, nothing released
    start = ws.ledger.size()
    with pytest.raises(PolicyDenied) as e:
        train(ws, TrainRequest("ft-us", "ohio", "fine-tuning", ("plant",), size="tiny", base="arm-base",
                               train=fast(2)))
    assert any(r.startswith("model/arm-base/") for r in e.value.rules)
    assert "dataset/plant/jurisdictions" in e.value.rules
    assert {x["kind"] for x in entries_since(ws, start)} == {"decision"}
    # model options: refused before anything is decided or any folder exists
    size = ws.ledger.size()
    base_cmd = ["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "arms", "--purpose", PRETRAIN,
                "--config", "tiny", "--steps", "2", "--name", "m-opt"]
    for option in ("d_model=63", "world_weight=inf", "huber_beta=nan", "feedback_gain=-inf"):
        assert main([*base_cmd, "--model-option", option]) == 1, option
    for overrides in ((("d_model", 63),), (("ensemble_m", float("inf")),), (("world_weight", float("nan")),)):
        with pytest.raises(ValidationError):
            train(ws, TrainRequest("m-opt", "sakai", PRETRAIN, ("arms",), size="tiny", train=fast(2),
                                   model_overrides=overrides))
    with pytest.raises(ValidationError, match="finite"):
        train(ws, TrainRequest("m-opt", "sakai", PRETRAIN, ("arms",), size="tiny", train=fast(2, lr=float("inf"))))
    assert ws.ledger.size() == size
    assert not _folder(ws, "m-opt").exists()


def _cli_train(ws_root: Path, name: str, steps: int) -> subprocess.Popen:  # type: ignore[type-arg]
    cmd = [sys.executable, "-m", "onshore", "-w", str(ws_root), "train", "--site", "sakai", "--datasets",
           "arms,plant", "--purpose", PRETRAIN, "--config", "tiny", "--steps", str(steps), "--batch-size", "16",
           "--checkpoint-every", "20", "--name", name, "--threads", "1", "--precision", "fp32", "--text-encoder",
           HASHED, "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_runs_of_one_name_at_once_one_trains_and_the_model_opens(
        consortium: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    ws = consortium
    start = ws.ledger.size()
    winner = _cli_train(ws.root, "twin", 150)
    try:
        run_json = _folder(ws, "twin") / "run.json"
        deadline = time.monotonic() + 120
        while not run_json.exists() and winner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert winner.poll() is None, winner.communicate()
        # the second run of the same name, in this process, while the first trains
        code = main(["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "arms,plant", "--purpose",
                     PRETRAIN, "--config", "tiny", "--steps", "150", "--batch-size", "16", "--checkpoint-every", "20",
                     "--name", "twin", "--precision", "fp32", "--text-encoder", HASHED])
        err = capsys.readouterr().err
        assert code == 1 and "being trained by another process" in err and "Traceback" not in err
        assert winner.poll() is None, "the first run ended before the second was refused; raise its steps"
        out, werr = winner.communicate(timeout=300)
    finally:
        if winner.poll() is None:
            winner.kill()
    assert winner.returncode == 0, werr
    assert json.loads(out)["resumed_from_step"] == 0
    got = entries_since(ws, start)
    assert sum(e["kind"] == "job.start" for e in got) == 1
    # one run's decisions only: open_resident's two and the key service's two, nothing from the loser
    assert sum(e["kind"] == "decision" for e in got) == 4
    loaded = models.load_model_for(ws, "twin", "sakai", "read", PRETRAIN)
    assert {e["name"] for e in loaded.meta["embodiments"]} == {"sawyer-metaworld", "tennessee-eastman"}


def test_checkpoints_are_released_like_models_and_keep_their_datasets(consortium: Workspace) -> None:
    ws = consortium
    req = TrainRequest("ck", "sakai", PRETRAIN, ("arms", "plant"), size="tiny", train=fast(6))
    interrupted_run(ws, req, after=3)  # checkpoint at step 2
    folder = _folder(ws, "ck")
    assert (folder / "checkpoints" / "step-0000002" / "digests.json").is_file()
    ckpt = [e for e in entries_since(ws, 0) if e["kind"] == "job.checkpoint" and e["model"] == "ck"][-1]
    assert [d["name"] for d in ckpt["datasets"]] == ["arms", "plant"] and ckpt["site"] == "sakai"

    # an edited plaintext run.json cannot drop a dataset from the resumed run
    run = json.loads((folder / "run.json").read_text())
    dropped = TrainRequest("ck", "sakai", PRETRAIN, ("arms",), size="tiny", train=fast(6))
    (folder / "run.json").write_text(json.dumps(dropped.fingerprint(), indent=1, sort_keys=True))
    start = ws.ledger.size()
    with pytest.raises(IntegrityError, match="keeps its datasets"):
        train(ws, dropped)
    assert not [e for e in entries_since(ws, start) if e["kind"] == "key.release" and e.get("checkpoint")]
    # ... nor swap one (arms-tokyo is not at sakai: refused by policy before the checkpoint is looked at)
    (folder / "run.json").write_text(json.dumps(run, indent=1, sort_keys=True))

    # resuming the real run: the key service decides every recorded dataset and records the release
    start = ws.ledger.size()
    r = train(ws, req)
    assert r is not None and r.resumed_from == 2
    got = entries_since(ws, start)
    rel = [e for e in got if e["kind"] == "key.release" and e.get("checkpoint") is not None]
    assert len(rel) == 1 and rel[0]["model"] == "ck" and rel[0]["checkpoint"] == 2
    cited = [ws.ledger.get(i).entry for i in rel[0]["decision_indices"]]
    assert [c.kind for c in cited] == ["decision", "decision"]
    assert [c.body["request"]["dataset"] for c in cited] == ["arms", "plant"]
    assert all(c.body["decision"] == "allow" for c in cited)
    models.load_model_for(ws, "ck", "sakai", "read", PRETRAIN)  # the resumed model opens

    # a withdrawal reaches an unfinished run's checkpoints: the resume is refused (exit 3)
    req2 = TrainRequest("ck2", "sakai", PRETRAIN, ("arms", "plant"), size="tiny", train=fast(6))
    interrupted_run(ws, req2, after=3)
    datasets.withdraw(ws, "plant", "chem")
    start = ws.ledger.size()
    with pytest.raises(PolicyDenied, match="plant"):
        train(ws, req2)
    assert not [e for e in entries_since(ws, start) if e["kind"] == "key.release"]


N_COPIES = 4
# Each process opens the workspace first, then starts its copy at the same moment as the others (a
# person's shell would spread them further apart, hiding the race). An OnshoreError is printed as the
# CLI prints it; anything else leaves its traceback.
_AT_ONCE = """
import sys, time
from onshore.errors import OnshoreError
from onshore.workspace import Workspace, models
ws = Workspace.open(sys.argv[2])
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
try:
    print(models.copy_model(ws, sys.argv[3], sys.argv[4]))
except OnshoreError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_copies_of_one_model_to_one_site(backend: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    db = request.getfixturevalue("fresh_postgres_db") if backend == "postgres" else None
    ws = furnace_workspace(tmp_path, db_url=db)
    registry.add_site(ws, "kobe", "JP", "storage,compute,serve")
    root = ws.root
    ws.close()
    at = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", _AT_ONCE, str(at), str(root), MODEL, "kobe"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(N_COPIES)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0] + [1] * (N_COPIES - 1), results
    for code, _out, err in results:
        assert "Traceback" not in err and "database is locked" not in err, err
        if code == 1:
            assert "copying model" in err or "already at site" in err, err
    with Workspace.open(root) as w:
        copies = [e for e in w.ledger.entries(kinds=("model.copy",)) if e.entry.body["to"] == "kobe"]
        assert len(copies) == 1
        assert [s["site"] for s in models.sites_of(w, MODEL)] == ["sakai", "tokyo", "kobe"]
        loaded = models.load_model_for(w, MODEL, "kobe", "read", "fine-tuning")  # the winner's copy opens
        assert loaded.meta["name"] == MODEL
