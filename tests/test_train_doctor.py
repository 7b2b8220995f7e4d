"""What a killed run, copy or recording server leaves is found and closed by `onshore doctor`, and a
recording may go no further than the model that made it (issue 17, section 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from _serving import EMBODIMENT, MODEL, TASK, furnace_workspace
from _training import fast, interrupted_run, make_consortium
from onshore.cli.app import main
from onshore.errors import ValidationError
from onshore.serve import Client, service, tokens
from onshore.serve.plant import free_port
from onshore.serve.record import RecordOptions
from onshore.train.loop import TrainRequest, train
from onshore.workspace import doctor, models, registry

PRETRAIN = "foundation-pretraining"
STATE = np.array([600.0, 640.0, 4.0], dtype=np.float32)


def _by_check(report: doctor.DoctorReport, check: str) -> list[doctor.Finding]:
    return [f for f in report.findings if f.check == check]


def test_doctor_checks_model_folders_runs_checkpoints_and_keys(tmp_path: Path, telemetry: dict[str, Path]) -> None:
    ws = make_consortium(tmp_path, telemetry)
    try:
        sakai = Path(registry.get_site(ws, "sakai").root)
        train(ws, TrainRequest("done", "sakai", PRETRAIN, ("arms",), size="tiny", train=fast(2)))
        interrupted_run(ws, TrainRequest("left", "sakai", PRETRAIN, ("arms", "plant"), size="tiny",
                                         train=fast(6)), after=3)
        # an unrecorded checkpoint beside the recorded one (a kill between sealing and recording)
        ckpts = sakai / "models" / "left" / "checkpoints"
        (ckpts / "step-0000004").mkdir()
        (ckpts / "step-0000004" / "digests.json").write_text("{}")
        (sakai / "models" / "ghost").mkdir()  # a folder no model or run owns
        (sakai / "models" / "done" / "run.json").write_text("{}")  # killed after its release
        ws.keystore("site:tokyo").create_key("model", "stray")  # a copy killed before its wrap
        size = ws.ledger.size()

        report = doctor.run(ws)
        assert not report.ok and ws.ledger.size() == size  # nothing changed without --repair
        training = {Path(f.subject).name: f for f in _by_check(report, "training")}
        assert set(training) == {"left", "ghost", "done"}
        assert "unfinished training run of model 'left'" in training["left"].problem
        assert "step-0000002" in training["left"].problem and "step-0000004 is not recorded" in \
            training["left"].problem
        assert "run.json" in training["done"].problem
        assert [f.subject for f in _by_check(report, "model-keys")] == ["model 'stray' at 'tokyo'"]

        fixed = doctor.run(ws, repair=True)
        assert all(f.repaired for f in fixed.findings), fixed.findings
        abandoned = [e for e in ws.ledger.entries(size) if e.entry.kind == "job.abandoned"]
        assert len(abandoned) == 1 and abandoned[0].entry.body["model"] == "left"
        starts = [e.entry.body["job"] for e in ws.ledger.entries(kinds=("job.start",))
                  if e.entry.body["model"] == "left"]
        assert abandoned[0].entry.body["jobs"] == starts
        assert not (sakai / "models" / "left").exists() and not (sakai / "models" / "ghost").exists()
        assert not ws.keystore("site:sakai").has_key("model", "left")
        assert not ws.keystore("site:tokyo").has_key("model", "stray")
        assert ws.keystore("site:sakai").has_key("model", "done")  # the released model keeps its key
        assert doctor.run(ws).ok
        models.load_model_for(ws, "done", "sakai", "read", PRETRAIN)
        # the name of an abandoned run is free: a new run starts from step 0
        r = train(ws, TrainRequest("left", "sakai", PRETRAIN, ("arms", "plant"), size="tiny", train=fast(2)))
        assert r is not None and r.resumed_from == 0

        # an altered model file is reported, and left to a person
        sealed = sakai / "models" / "done" / "model.json.sealed"
        sealed.write_bytes(sealed.read_bytes()[:-1] + b"\0")
        bad = doctor.run(ws, repair=True)
        assert [f.repairable for f in _by_check(bad, "training")] == [False]
        assert "model.release" in _by_check(bad, "training")[0].problem and sealed.exists()
    finally:
        ws.close()


def _looser_policy(path: Path) -> Path:
    path.write_text('jurisdictions = ["JP", "US"]\nsites = []\npurposes = ["fine-tuning", "predictive-maintenance"]\n'
                    'expires = 2035-01-01\nderived_models = "keep"\n')
    return path


def test_a_recording_is_no_looser_than_the_model_and_names_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ws = furnace_workspace(tmp_path)  # the model's lineage says JP, stop-serving, until 2031-03-31
    try:
        looser = _looser_policy(tmp_path / "looser.toml")
        size = ws.ledger.size()
        with pytest.raises(ValidationError) as e:
            service.start(ws, MODEL, "tokyo", port=0, record=RecordOptions(looser, "steelco", "loose-run"))
        for field in ("jurisdictions (adds US", "purposes (adds predictive-maintenance", "expires (2035-01-01",
                      "derived_models ('keep'"):
            assert field in str(e.value), field
        assert ws.ledger.size() == size  # refused before serving: no decision, no model.serve
        assert main(["-w", str(ws.root), "serve", MODEL, "--site", "tokyo", "--port", "0", "--record-policy",
                     str(looser), "--record-member", "steelco"]) == 1
        assert "looser than model" in capsys.readouterr().err

        # a recording that stops cleanly names the model in its ingest entry's provenance
        tok = tokens.issue(ws, "tokyo", "line-1")
        record = RecordOptions(tmp_path / "record-policy.toml", "steelco", "furnace-run-2")
        with service.start(ws, MODEL, "tokyo", port=0, record=record) as run, Client(run.url, tok, EMBODIMENT) as c:
            c.reset(TASK, initial_action=np.array([0.0, 0.0], np.float32))
            for _ in range(3):
                c.act(STATE)
        ingest = ws.ledger.get(run.report.recorded[0]["ledger_index"]).entry  # type: ignore[union-attr]
        assert ingest.kind == "data.ingest" and ingest.body["dataset"] == "furnace-run-2"
        assert ingest.body["provenance"]["model"] == MODEL and ingest.body["provenance"]["site"] == "tokyo"
        spool_root = Path(registry.get_site(ws, "tokyo").root) / "runs" / ".spool"
        assert not any(spool_root.iterdir())
    finally:
        ws.close()


def test_a_recording_server_killed_mid_run_leaves_no_plaintext(tmp_path: Path) -> None:
    ws = furnace_workspace(tmp_path)
    try:
        tok = tokens.issue(ws, "tokyo", "line-1")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "onshore", "-w", str(ws.root), "serve", MODEL, "--site",
                                 "tokyo", "--port", str(port), "--record-policy", str(tmp_path / "record-policy.toml"),
                                 "--record-member", "steelco"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                    time.sleep(0.1)
            c = Client(f"ws://127.0.0.1:{port}", tok, EMBODIMENT)
            c.reset(TASK, initial_action=np.array([0.0, 0.0], np.float32))
            for _ in range(4):
                c.act(STATE)
            c.reset(TASK)  # the first episode is spooled now
            c.act(STATE)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        spool_root = Path(registry.get_site(ws, "tokyo").root) / "runs" / ".spool"
        files = [p for p in spool_root.rglob("*") if p.is_file()]
        episodes = [p for p in files if ".parquet" in p.name]
        assert episodes, files
        for p in files:
            assert p.suffix != ".parquet" and not p.read_bytes().startswith(b"PAR1"), p  # no plaintext Parquet
        found = _by_check(doctor.run(ws), "recordings")
        assert len(found) == 1 and "sealed file(s)" in found[0].problem and "PLAINTEXT" not in found[0].problem
        assert all(f.repaired for f in _by_check(doctor.run(ws, repair=True), "recordings"))
        assert not any(spool_root.iterdir())
    finally:
        ws.close()
