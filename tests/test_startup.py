"""Listing commands start light: a fresh interpreter running one never imports torch, matplotlib or
the simulators (their import alone took over a second; the timings live in bench/startup_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _serving import MODEL, furnace_workspace

HEAVY = ("torch", "matplotlib", "metaworld", "mujoco", "tep_studio", "asyncua")
PROBE = f"""
import json, sys
from onshore.cli.app import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = furnace_workspace(tmp_path_factory.mktemp("startup"))  # a dataset and a trained model to list
    ws.close()
    return ws.root


@pytest.mark.parametrize("command", [["site", "list"], ["member", "list"], ["dataset", "list"],
                                     ["dataset", "show", "furnace"], ["model", "list"], ["model", "show", MODEL],
                                     ["ledger", "log"], ["--help"]])
def test_listing_commands_import_nothing_heavy(ws_root: Path, command: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, "-w", str(ws_root), *command], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, (command, report)
