"""Many writers at once, on SQLite and PostgreSQL: 8 worker processes run a mix of real commands.

Afterwards: no worker met anything but a clean OnshoreError, no command failed for waiting
(LockTimeout), exactly one ingest of each shared name won, every dataset reported ingested reads
back whole, `doctor` finds nothing and the ledger verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from _hold import hold_after_its_entry, hold_after_its_ledger_read, hold_first_ingest_after_its_entries
from _workload import SHARED_NAMES, make_workspace
from onshore.errors import PolicyDenied, ValidationError
from onshore.residency.pdp import Request
from onshore.workspace import Workspace, datasets, doctor

WORKERS = 8
SECONDS = 8.0
MIN_OPS = 6  # per worker, however slow the machine: 48 operations race in all
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run_workers(ws_path: Path, tmp: Path, workers: int, seconds: float) -> list[dict]:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": SRC, "ONSHORE_LOCK_TIMEOUT": "60"}
    script = str(Path(__file__).with_name("_workload.py"))
    procs = [subprocess.Popen([sys.executable, script, str(ws_path), str(seconds), str(i), str(tmp / f"w{i}.json"),
                               "0", str(MIN_OPS)], env=env, stderr=subprocess.PIPE, text=True) for i in range(workers)]
    records = []
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=seconds + 300)
        assert p.returncode == 0, f"worker {i} exited {p.returncode}: {err[-2000:]}"
        records += json.loads((tmp / f"w{i}.json").read_text())
    return records


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_many_writers_wait_their_turn(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ws_path = make_workspace(tmp_path, **_urls(backend, request))
    records = _run_workers(ws_path, tmp_path, WORKERS, SECONDS)

    crashes = [r for r in records if r.get("crash")]
    assert not crashes, crashes[0]["crash"]
    assert not [r for r in records if r.get("error") == "LockTimeout"]
    ops = Counter(r["op"] for r in records if r["ok"])
    assert ops["ingest"] >= 3 and sum(ops.values()) >= 20, ops
    ingested = Counter(r["target"] for r in records if r["ok"] and r["op"] == "ingest")
    assert all(n == 1 for n in ingested.values()), ingested
    lost = [r for r in records if not r["ok"] and r["message"].startswith(tuple(f"dataset '{n}'" for n in SHARED_NAMES))
            and "already exists" in r["message"]]
    assert all(r["error"] == "ValidationError" for r in lost)

    with Workspace.open(ws_path) as ws:
        report = doctor.run(ws)
        assert report.ok and not report.findings and not report.in_progress, report.to_json()
        ws.verify_ledger()
        placed = {(d["name"], s) for d in datasets.list_datasets(ws) for s in d["sites"]}
        for name in ingested:
            d = datasets.show(ws, name)
            for site in {s["site"] for s in d["shards"]}:
                if d["status"] == "active":
                    assert datasets.read(ws, name, site).num_rows == 200
                else:
                    with pytest.raises(PolicyDenied):
                        datasets.read(ws, name, site)
        # every copy reported done is in place
        for r in records:
            if r["ok"] and r["op"] == "copy":
                assert any(p[0] == r["target"] and p[1] != "sakai" for p in placed)
        assert ws.decide(Request("site:ohio", "read", next(iter(ingested)), "ohio"))[0].allowed is False


def _urls(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Catalog and ledger in two fresh PostgreSQL databases, or nothing (SQLite in the workspace)."""
    if backend != "postgresql":
        return {}
    base = request.getfixturevalue("postgres_url")
    return {"catalog_url": request.getfixturevalue("fresh_postgres_db"),
            "ledger_url": base.rsplit("/", 1)[0] + "/" + _new_db(base)}


def _new_db(url: str) -> str:
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_ingest_that_loses_a_race_being_finished_is_refused_not_called_a_lost_row(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The winner is held between its ledger append and its catalog commit (where the grant is
    visible without the row); the loser must wait for it and be refused as a lost race
    (ValidationError), never told that the catalog lost a row (IntegrityError)."""
    ws_path = make_workspace(tmp_path, **_urls(backend, request))
    held, go = hold_first_ingest_after_its_entries(monkeypatch)
    outcome: dict[str, object] = {}

    def ingest(who: str) -> None:
        try:
            outcome[who] = _ingest(ws_path, "dup")
        except Exception as e:  # noqa: BLE001 - the test inspects what each side met
            outcome[who] = e

    winner = threading.Thread(target=ingest, args=("winner",))
    winner.start()
    assert held.wait(60)
    loser = threading.Thread(target=ingest, args=("loser",))
    loser.start()
    loser.join(1.0)  # the loser now waits for the winner's catalog turn
    go.set()
    winner.join(60)
    loser.join(60)
    assert isinstance(outcome["winner"], datasets.IngestResult), outcome["winner"]
    lost = outcome["loser"]
    assert isinstance(lost, ValidationError) and "already exists" in str(lost), repr(lost)
    with Workspace.open(ws_path) as ws:
        assert datasets.read(ws, "dup", "sakai").num_rows == 200
        report = doctor.run(ws)
        assert report.ok and not report.findings and not report.in_progress, report.to_json()


def _ingest(ws_path: Path, name: str) -> datasets.IngestResult:
    with Workspace.open(ws_path) as ws:
        inputs = ws_path.parent
        return datasets.ingest(ws, name, "steelco", "sakai", inputs / "policy.toml", "furnace-line-3",
                               [inputs / "frames.parquet"])


def _decide_while(ws: Workspace, commit: Callable[[], object]) -> object:
    """``ws`` decides a read of ``first`` while ``commit`` runs whole between the decision's ledger
    read and its catalog read; what the decision said (allowed or not), or what it raised."""
    held, go = threading.Event(), threading.Event()
    hold_after_its_ledger_read(ws, held, go)
    outcome: dict[str, object] = {}

    def decide() -> None:
        try:
            outcome["first"] = ws.decide(Request("site:sakai", "read", "first", "sakai"))[0].allowed
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome["first"] = e

    t = threading.Thread(target=decide)
    t.start()
    assert held.wait(60)
    commit()
    go.set()
    t.join(60)
    return outcome["first"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_decision_that_reads_the_ledger_before_another_ingest_commits_is_no_integrity_alarm(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A decision point is built from the ledger and the catalog, read one after the other. A
    dataset ingested completely between the two reads is in the catalog but was not yet in the
    ledger read: that is a race, not a catalog row without a grant."""
    ws_path = make_workspace(tmp_path, **_urls(backend, request))
    _ingest(ws_path, "first")
    with Workspace.open(ws_path) as ws:
        # whole: ledger entries and catalog row, while the decision waits
        first = _decide_while(ws, lambda: _ingest(ws_path, "second"))
        assert first is True, first
        assert ws.decide(Request("site:sakai", "read", "second", "sakai"))[0].allowed


def _release(ws: Workspace, name: str) -> None:
    """Record a model version trained on dataset ``first`` (the registry rows and ledger entry a
    finished training run leaves, without the training)."""
    from onshore.keys.envelope import new_data_key
    from onshore.workspace import models

    models.release(ws, models.ModelRelease(
        name=name, site="sakai", purpose="fine-tuning", size="tiny", config={}, folder=f"models/{name}",
        files={}, parameters=1, steps=1, world_size=1, metrics={},
        datasets=[{"name": "first", "owner": "steelco", "embodiment": "furnace-line-3", "weight": 1.0,
                   "shards": [], "decision_index": 0}]), new_data_key())


@pytest.mark.parametrize("committed", ["model", "site"])
def test_a_decision_that_reads_the_ledger_before_a_release_or_a_new_site_commits_is_no_integrity_alarm(
        committed: str, tmp_path: Path) -> None:
    """The same read order for the catalog's models and sites: a model released, or a site added,
    completely between a decision's ledger read and its catalog read is a race, not a catalog row
    that no signed entry registers."""
    from onshore.workspace import registry, versions

    ws_path = make_workspace(tmp_path)
    _ingest(ws_path, "first")

    def commit() -> None:  # whole: ledger entry and catalog row, while the decision waits
        with Workspace.open(ws_path) as other:
            if committed == "model":
                _release(other, versions.next_id(other, "plant"))
            else:
                registry.add_site(other, "nagoya", "JP", "storage,compute")

    with Workspace.open(ws_path) as ws:
        first = _decide_while(ws, commit)
        assert first is True, first


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_decision_point_built_during_another_ingest_does_not_keep_refusing_its_dataset(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running process decides while another process's ingest is between its ledger append
    and its catalog commit; once that commit lands, the new dataset is decided by its own policy,
    not refused by a decision point cached without it."""
    ws_path = make_workspace(tmp_path, **_urls(backend, request))
    _ingest(ws_path, "first")
    held, go = hold_first_ingest_after_its_entries(monkeypatch)
    with Workspace.open(ws_path) as server:
        assert server.decide(Request("site:sakai", "read", "first", "sakai"))[0].allowed
        t = threading.Thread(target=_ingest, args=(ws_path, "second"))
        t.start()
        assert held.wait(60)
        assert server.decide(Request("site:sakai", "read", "first", "sakai"))[0].allowed  # in the window
        assert not server.decide(Request("site:sakai", "read", "second", "sakai"))[0].allowed  # not committed
        go.set()
        t.join(60)
        second = server.decide(Request("site:sakai", "read", "second", "sakai"))[0]
        assert second.allowed and second.rules == ("dataset/second/grant",), second
        assert not server.decide(Request("site:ohio", "read", "second", "ohio"))[0].allowed


def test_a_decision_point_built_during_another_release_does_not_keep_refusing_the_new_model(tmp_path: Path) -> None:
    """The same for a model: decided on while another process's release is between its ledger
    append and its catalog commit, the server then decides the new version by its lineage."""
    from onshore.workspace import models, versions

    ws_path = make_workspace(tmp_path)
    _ingest(ws_path, "first")
    with Workspace.open(ws_path) as ws:
        v1 = versions.next_id(ws, "plant")
        _release(ws, v1)
    held, go = threading.Event(), threading.Event()
    names: list[str] = []

    def release_v2() -> None:
        with Workspace.open(ws_path) as other:
            hold_after_its_entry(other, held, go)
            names.append(versions.next_id(other, "plant"))
            _release(other, names[0])

    with Workspace.open(ws_path) as server:
        assert models.decide(server, v1, "serve", "tokyo", "fine-tuning")[0].allowed
        t = threading.Thread(target=release_v2)
        t.start()
        assert held.wait(60)
        assert models.decide(server, v1, "serve", "tokyo", "fine-tuning")[0].allowed  # in the window
        go.set()
        t.join(60)
        v2 = models.decide(server, names[0], "serve", "tokyo", "fine-tuning")[0]
        assert v2.allowed and v2.rules == (f"model/{names[0]}/grant",), v2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_decision_during_a_site_change_waits_for_it_instead_of_calling_the_catalog_edited(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A role change appends its site.add entry, then commits the site's row. Every running
    server re-decides when it sees that entry, so it may well decide in between, where the catalog
    still shows the old roles: that must not read as a catalog edited against the ledger (which
    would stop the server). The decision waits for the change and is the one made after it."""
    from onshore.workspace import registry

    ws_path = make_workspace(tmp_path, **_urls(backend, request))
    _ingest(ws_path, "first")
    held, go = threading.Event(), threading.Event()

    def change_roles() -> None:
        with Workspace.open(ws_path) as admin:
            hold_after_its_entry(admin, held, go)
            registry.set_site_roles(admin, "tokyo", "storage,serve")  # compute withdrawn

    train = Request("site:tokyo", "train", "first", "tokyo", "foundation-pretraining")
    with Workspace.open(ws_path) as server:
        assert server.decide(train)[0].allowed
        t = threading.Thread(target=change_roles)
        t.start()
        assert held.wait(60)
        outcome: dict[str, object] = {}

        def decide() -> None:
            try:
                outcome["train"] = server.decide(train)[0]
            except Exception as e:  # noqa: BLE001 - the test inspects it
                outcome["train"] = e

        def check() -> None:
            with Workspace.open(ws_path) as ops:
                outcome["doctor"] = doctor.check_signed_rules(ops)

        d, c = threading.Thread(target=decide), threading.Thread(target=check)
        d.start()
        c.start()
        d.join(1.0)
        assert d.is_alive()  # waiting for the change to commit
        go.set()
        t.join(60)
        d.join(60)
        c.join(60)
    decision = outcome["train"]
    assert not isinstance(decision, Exception), decision
    assert outcome["doctor"] == [], outcome["doctor"]  # nor does doctor call the row edited
    assert not decision.allowed and decision.rules == ("workspace/role-compute",), decision  # type: ignore[attr-defined]
    with Workspace.open(ws_path) as fresh:
        assert fresh.decide(train)[0].rules == decision.rules  # type: ignore[attr-defined]
