"""A workspace with a trained tiny model for serving tests: the furnace embodiment (10 Hz, rate
limits on both actions) at sakai, trained there, servable at tokyo (the site with the serve role)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import POLICY_JP, build_consortium, write_frames
from onshore.model.text import HASHED
from onshore.serve.plant import free_port
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, models

MODEL = "furnace-tiny"
EMBODIMENT = "furnace-line-3"
TASK = "keep zone temperatures"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # child processes import this tree
RECORD_POLICY = """jurisdictions = ["JP"]
sites = ["tokyo"]
purposes = ["fine-tuning"]
expires = 2031-03-31
derived_models = "stop-serving"
"""


def furnace_workspace(root: Path, clause: str = "stop-serving", db_url: str | None = None) -> Workspace:
    """Furnace telemetry of steelco at sakai under a JP policy, a tiny model trained on it, copied to tokyo
    (catalog and ledger in the database ``db_url`` when given, else SQLite)."""
    ws = Workspace.init(root / "ws", "serve-test", catalog_url=db_url, ledger_url=db_url)
    build_consortium(ws, root)
    policy = root / "furnace-policy.toml"
    policy.write_text(POLICY_JP.replace('"stop-serving"', f'"{clause}"'))
    frames = write_frames(root / "furnace.parquet", episodes=3, frames=40)
    datasets.ingest(ws, "furnace", "steelco", "sakai", policy, EMBODIMENT, [frames])
    config = TrainConfig(steps=2, batch_size=8, checkpoint_every=2, log_every=1, precision="fp32",
                         text_encoder=HASHED, warmup=1)
    train(ws, TrainRequest(MODEL, "sakai", "fine-tuning", ("furnace",), size="tiny", train=config))
    models.copy_model(ws, MODEL, "tokyo")  # served where it sits: tokyo has the serve role
    (root / "record-policy.toml").write_text(RECORD_POLICY)
    return ws


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


def serve(ws: Workspace) -> Server:
    """`onshore serve` as its own process, once it answers /healthz."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "onshore", "-w", str(ws.root), "serve", MODEL, "--site", "tokyo",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                assert json.loads(r.read())["status"] == "ok"
            return Server(proc, port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(proc.communicate()[1]) from None
            time.sleep(0.2)
