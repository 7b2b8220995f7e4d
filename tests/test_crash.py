"""SIGKILL at every named crash point of ingest, copy and withdraw, on SQLite and PostgreSQL.

Each run of the real CLI is killed at one point (``ONSHORE_FAULT``, see onshore/faults.py); then
the same command runs again. Afterwards nothing is lost (every dataset reads back whole, or is
refused as withdrawn), nothing is half-visible (catalog and ledger agree, no orphan files),
nothing needs a human (`onshore doctor` finds nothing to do), and attestation still works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _workload import make_workspace
from onshore.attest.bundle import attest_dataset, collect_history
from onshore.errors import PolicyDenied
from onshore.faults import POINTS
from onshore.workspace import Workspace, datasets, doctor

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(ws_path: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "ONSHORE_WORKSPACE": str(ws_path)}
    env.pop("ONSHORE_FAULT", None)
    if fault:
        env["ONSHORE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "onshore", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _ingest_args(ws_path: Path, name: str) -> list[str]:
    inputs = ws_path.parent
    return ["dataset", "ingest", name, str(inputs / "frames.parquet"), "--member", "steelco", "--site", "sakai",
            "--policy", str(inputs / "policy.toml"), "--embodiment", "furnace-line-3"]


def _workspace(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Path:
    if backend == "sqlite":
        return make_workspace(tmp_path)
    return make_workspace(tmp_path, request.getfixturevalue("fresh_postgres_db"),
                          request.getfixturevalue("fresh_postgres_db").replace("/t_", "/t_", 1))


def _command(op: str, ws_path: Path, name: str) -> list[str]:
    if op == "ingest":
        return _ingest_args(ws_path, name)
    if op == "copy":
        return ["dataset", "copy", name, "--to", "tokyo"]
    return ["dataset", "withdraw", name, "--member", "steelco"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("op", ["ingest", "copy", "withdraw"])
def test_a_kill_at_any_point_is_recovered(op: str, backend: str, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    ws_path = _workspace(tmp_path, backend, request)
    points = [p for p in POINTS if p.startswith(op + ".")]
    names = [f"d{i}" for i in range(len(points))]
    if op != "ingest":  # something to copy or withdraw, ingested through the library
        with Workspace.open(ws_path) as ws:
            for n in names:
                datasets.ingest(ws, n, "steelco", "sakai", ws_path.parent / "policy.toml", "furnace-line-3",
                                [ws_path.parent / "frames.parquet"])
    for point, name in zip(points, names, strict=True):
        killed = _cli(ws_path, *_command(op, ws_path, name), fault=point)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-1000:])
        again = _cli(ws_path, *_command(op, ws_path, name))
        # the outcome was committed before the kill, or (a withdrawal in the ledger) is rolled
        # forward by the rerun's recovery: the rerun is a clean refusal
        if point.endswith(".committed") or point == "withdraw.ledgered":
            assert again.returncode in (1, 3), (point, again.stderr)
            assert "Traceback" not in again.stderr
        else:
            assert again.returncode == 0, (point, again.stderr[-2000:])

    out = _cli(ws_path, "doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"ok": True, "findings": [], "in_progress": []}
    with Workspace.open(ws_path) as ws:
        ws.verify_ledger()
        assert doctor.run(ws).ok
        for name in names:
            d = datasets.show(ws, name)
            sites = sorted({s["site"] for s in d["shards"]})
            assert sites == (["sakai", "tokyo"] if op == "copy" else ["sakai"]), (name, sites)
            history = collect_history(ws, name)  # exactly one live grant and ingest: attestable
            if op == "withdraw":
                assert d["status"] == "withdrawn" and d["key_held_at"] == [] and history.withdrawal is not None
                with pytest.raises(PolicyDenied):
                    datasets.read(ws, name, "sakai")
            else:
                for site in sites:
                    assert datasets.read(ws, name, site).num_rows == 200
                assert len(attest_dataset(ws, name)["entries"]) >= 3
        for site in ("sakai", "tokyo"):
            root = Path(datasets.get_site(ws, site).root)
            assert not any((root / ".staging").glob("*")), list((root / ".staging").glob("*"))
        assert not any((ws.root / "locks").glob("*"))


def test_fingerprints_of_an_abandoned_ingest_claim_nothing(tmp_path: Path) -> None:
    """An ingest killed after its entries were appended made no dataset: its data is nobody's."""
    ws_path = make_workspace(tmp_path)
    killed = _cli(ws_path, *_ingest_args(ws_path, "lost"), fault="ingest.ledgered")
    assert killed.returncode == -9, killed.stderr[-1000:]
    inputs = ws_path.parent
    with Workspace.open(ws_path) as ws:
        assert any(e.entry.body.get("fingerprints") for e in ws.ledger.entries(kinds=["data.ingest"]))
        doctor.run(ws, repair=True)  # closes the attempt with data.abandoned
        assert [e.entry.kind for e in ws.ledger.entries(kinds=["data.abandoned"])] == ["data.abandoned"]
        # another member may ingest the same frames: nothing of steelco's holds them
        datasets.ingest(ws, "theirs", "autoco", "sakai", inputs / "policy.toml", "furnace-line-3",
                        [inputs / "frames.parquet"])
        # while a dataset that exists keeps its frames its owner's
        with pytest.raises(PolicyDenied, match="identical to episodes of dataset 'theirs'"):
            datasets.ingest(ws, "again", "steelco", "sakai", inputs / "policy.toml", "furnace-line-3",
                            [inputs / "frames.parquet"])
