"""`onshore doctor`, `ledger verify` against stored checkpoints, waiting writers, group commit, batch proofs."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete

from conftest import write_frames
from onshore.catalog.db import write_transaction
from onshore.errors import IntegrityError, LockTimeout, OnshoreError
from onshore.ledger.entries import sign_entry
from onshore.ledger.log import ledger_entries, ledger_nodes, node_key
from onshore.residency.pdp import Request
from onshore.workspace import Workspace, datasets, doctor, registry

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _ingest(ws: Workspace, tmp: Path, policy_file: Path, name: str = "furnace") -> datasets.IngestResult:
    return datasets.ingest(ws, name, "steelco", "sakai", policy_file, "furnace-line-3",
                           [write_frames(tmp / f"{name}.parquet")])


def test_doctor_finds_and_repairs_orphans_and_reports_missing_shards(ws: Workspace, tmp_path: Path,
                                                                    policy_file: Path) -> None:
    r = _ingest(ws, tmp_path, policy_file)
    assert doctor.run(ws).findings == []
    root = Path(registry.get_site(ws, "sakai").root)
    orphan = root / "datasets" / "furnace" / ("0" * 64 + ".parquet")
    orphan.write_bytes(b"leftover")
    stale = root / ".staging" / "deadbeef"
    stale.mkdir(parents=True)
    (stale / "x.tmp").write_bytes(b"half written")
    report = doctor.run(ws)
    assert {f.check for f in report.findings} == {"orphans"} and not report.ok
    assert orphan.exists() and stale.exists()  # nothing changes without --repair
    repaired = doctor.run(ws, repair=True)
    assert repaired.ok and all(f.repaired == "removed" for f in repaired.findings)
    assert not orphan.exists() and not stale.exists()
    assert (ws.reports_dir / doctor.LOG_FILE).read_text().count("removed") == 2
    assert doctor.run(ws).findings == []

    (root / r.shards[0].path).unlink()
    missing = doctor.run(ws, repair=True)
    assert not missing.ok and missing.findings[0].check == "files" and "missing" in missing.findings[0].problem


def test_doctor_closes_ingest_entries_the_catalog_never_committed(ws: Workspace, tmp_path: Path,
                                                                  policy_file: Path) -> None:
    # what a crash between the ledger append and the catalog commit left before the attempt journal
    _ingest(ws, tmp_path, policy_file)
    with write_transaction(ws.catalog, "the catalog") as conn:
        from onshore.catalog import schema as T

        for t in (T.key_wraps, T.shards, T.datasets):
            conn.execute(delete(t))
    report = doctor.run(ws)
    assert [f.check for f in report.findings if f.repairable] == ["catalog-ledger", "orphans"]
    assert doctor.run(ws, repair=True).ok
    assert doctor.run(ws).findings == []
    r = _ingest(ws, tmp_path, policy_file)  # the name is usable again and attestable
    from onshore.attest.bundle import collect_history

    assert collect_history(ws, "furnace").ingest.index == r.ledger_indices[-1]


def test_ledger_verify_refuses_a_ledger_shorter_than_its_stored_checkpoint(ws: Workspace) -> None:
    ws.make_checkpoint()
    n = ws.ledger.size()
    ws.verify_ledger()
    with write_transaction(ws.ledger.engine, "the ledger") as conn:
        conn.execute(delete(ledger_entries).where(ledger_entries.c.idx == n - 1))
        conn.execute(delete(ledger_nodes).where(ledger_nodes.c.node == node_key(0, n - 1)))
    with pytest.raises(IntegrityError, match="truncation"):
        ws.verify_ledger()
    assert not doctor.run(ws).ok


def test_a_writer_waits_for_its_turn_and_then_says_what_it_waited_for(ws: Workspace, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "ONSHORE_WORKSPACE": str(ws.root), "ONSHORE_LOCK_TIMEOUT": "1"}
    cmd = [sys.executable, "-m", "onshore", "member", "add", "newco"]
    with write_transaction(ws.catalog, "the catalog"):
        held = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert held.returncode == 1 and "Traceback" not in held.stderr
    assert "write lock on the catalog" in held.stderr and "ONSHORE_LOCK_TIMEOUT" in held.stderr
    # released: the same command now goes through, waiting if it must
    env["ONSHORE_LOCK_TIMEOUT"] = "30"
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).returncode == 0


def test_appends_from_many_threads_are_group_committed(ws: Workspace) -> None:
    key = ws.signer("log")
    before = ws.ledger.size()
    got: list[list[int]] = []

    def writer(t: int) -> None:
        for i in range(50):
            got.append(ws.ledger.append([sign_entry("decision", "log", {"t": t, "i": i}, key)]))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    indices = sorted(i for g in got for i in g)
    assert indices == list(range(before, before + 400))
    ws.verify_ledger()


def test_batch_inclusion_proofs_equal_single_ones(ws: Workspace) -> None:
    key = ws.signer("log")
    ws.ledger.append([sign_entry("decision", "log", {"i": i}, key) for i in range(300)])
    n = ws.ledger.size()
    cited = [0, 1, 7, 64, 65, 128, n - 2, n - 1]
    assert ws.ledger.inclusion_proofs(cited, n) == [ws.ledger.inclusion_proof(i, n) for i in cited]
    assert ws.ledger.inclusion_proofs(cited[:3], 100) == [ws.ledger.inclusion_proof(i, 100) for i in cited[:3]]


def test_kept_append_connection_still_waits_for_other_ledger_writers(ws: Workspace,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key = ws.signer("log")
    ws.ledger.append([sign_entry("decision", "log", {"i": 0}, key)])  # opens the kept connection and lock file
    monkeypatch.setenv("ONSHORE_LOCK_TIMEOUT", "0.5")
    with write_transaction(ws.ledger.engine, "the ledger"):
        with pytest.raises(LockTimeout, match="write lock on the ledger"):
            ws.ledger.append([sign_entry("decision", "log", {"i": 1}, key)])
    # the failed turn left nothing held: another workspace object (as another process would)
    # and this one alternate, each finding the tree the other grew
    other = Workspace.open(ws.root)
    try:
        for i in range(20):
            (ws if i % 2 else other).ledger.append([sign_entry("decision", "log", {"i": i}, key)])
        assert other.ledger.size() == ws.ledger.size()
    finally:
        other.close()
    ws.verify_ledger()


def test_a_forked_child_appends_on_its_own_connection(ws: Workspace) -> None:
    key = ws.signer("log")
    ws.ledger.append([sign_entry("decision", "log", {"who": "parent"}, key)])
    before = ws.ledger.size()

    def child() -> None:
        ws.ledger.append([sign_entry("decision", "log", {"who": "child", "i": i}, key) for i in range(3)])

    p = multiprocessing.get_context("fork").Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert ws.ledger.append([sign_entry("decision", "log", {"who": "parent"}, key)]) == [before + 3]
    ws.verify_ledger()


def test_decide_many_records_every_decision_in_one_transaction(ws: Workspace, tmp_path: Path,
                                                             policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    requests = [Request("site:sakai", "read", "furnace", "sakai"),
                Request("site:ohio", "copy", "furnace", "ohio"),
                Request("site:tokyo", "train", "furnace", "tokyo", "fine-tuning")]
    before = ws.ledger.size()
    decided = ws.decide_many(requests)
    assert [i for _, i in decided] == list(range(before, before + 3))
    assert [d for d, _ in decided] == [ws.decide(r)[0] for r in requests]
    assert [d.allowed for d, _ in decided] == [True, False, True]
    for (d, i), r in zip(decided, requests, strict=True):
        entry = ws.ledger.get(i).entry
        assert entry.kind == "decision" and entry.actor == r.principal and entry.body == d.to_json()
    # one request that cannot be decided refuses the batch; nothing is recorded
    size = ws.ledger.size()
    with pytest.raises(OnshoreError, match="unknown site"):
        ws.decide_many([requests[0], Request("site:sakai", "read", "furnace", "nowhere")])
    assert ws.ledger.size() == size
    ws.verify_ledger()
