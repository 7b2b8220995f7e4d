"""Listings about one dataset or model read the ledger's subject index, and the decision point's
governance read walks the index of entries by kind: same results as a full scan, on SQLite and
PostgreSQL, and a cost that follows the entries asked for, not the size of the ledger (issue 22)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from conftest import POLICY_JP, build_consortium, write_frames
from onshore.errors import PolicyDenied
from onshore.ledger.log import StoredEntry
from onshore.residency.pdp import Request
from onshore.web import pages
from onshore.workspace import Workspace, datasets
from onshore.workspace.governance import read_governance


def _old_dataset_of(e: StoredEntry) -> str | None:
    """What the pages matched before the index: ``body.dataset``, else ``body.request.dataset``."""
    b = e.entry.body
    r = b.get("request") if isinstance(b.get("request"), dict) else {}
    return b.get("dataset") or r.get("dataset")


def _pad(ws: Workspace, dataset: str, n: int) -> None:
    """``n`` real decisions about ``dataset`` (allowed reads at sakai, refused copies to ohio)."""
    reqs = [Request("site:sakai", "read", dataset, "sakai", "fine-tuning") if i % 3 else
            Request("site:ohio", "copy", dataset, "ohio", "fine-tuning") for i in range(n)]
    for start in range(0, n, 500):
        ws.decide_many(reqs[start:start + 500])


@pytest.fixture(params=["sqlite", "postgresql"])
def busy_ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    """Two datasets, ``furnace`` (ingested, copied, a refused copy, withdrawn later) and ``kiln``,
    with decisions about each interleaved, and a model's evaluations and serve entries."""
    if request.param == "sqlite":
        ws = Workspace.init(tmp_path / "ws", "index-test")
    else:
        ws = Workspace.init(tmp_path / "ws", "index-test", catalog_url=request.getfixturevalue("fresh_postgres_db"),
                            ledger_url=request.getfixturevalue("fresh_postgres_db"))
    build_consortium(ws, tmp_path)
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY_JP)
    datasets.ingest(ws, "furnace", "steelco", "sakai", policy, "furnace-line-3", [write_frames(tmp_path / "f.parquet")])
    datasets.ingest(ws, "kiln", "autoco", "tokyo", policy, "furnace-line-3",
                    [write_frames(tmp_path / "k.parquet", seed=1)])
    datasets.copy(ws, "furnace", "tokyo")
    with pytest.raises(PolicyDenied):
        datasets.copy(ws, "furnace", "ohio")
    for i in range(3):
        _pad(ws, "kiln", 40)
        _pad(ws, "furnace", 7)
        # a model's history as its page reads it (entries about model:arm-policy)
        ws.record("model.eval", "site:sakai", {"model": "arm-policy", "site": "sakai", "success_rate": i / 3})
        ws.record("model.serve", "site:tokyo", {"model": "arm-policy", "site": "tokyo", "event": "start"})
    datasets.withdraw(ws, "furnace", "steelco")
    yield ws
    ws.close()


def _full_scan(ws: Workspace) -> list[StoredEntry]:
    return list(reversed(list(ws.ledger.entries())))


def test_indexed_ledger_filter_equals_a_full_scan(busy_ws: Workspace) -> None:
    ws = busy_ws
    everything = _full_scan(ws)
    for f in (pages.LogFilter(dataset="furnace"), pages.LogFilter(dataset="kiln", kind="decision"),
              pages.LogFilter(dataset="furnace", site="ohio"), pages.LogFilter(dataset="furnace", kind="data.copy"),
              pages.LogFilter(dataset="no-such-dataset"), pages.LogFilter(dataset="' OR 1=1 --")):
        want = [pages.entry_json(e) for e in everything if (not f.kind or e.entry.kind == f.kind) and f.matches(e)]
        # what the LIKE scan matched before: the same entries
        if not f.site:
            assert [e["index"] for e in want] == [
                e.index for e in everything if (not f.kind or e.entry.kind == f.kind)
                and _old_dataset_of(e) == f.dataset], f
        got, before = [], None
        while True:  # page through it 7 at a time, as the ledger page's "older" link does
            page = pages.ledger_log(ws, f, before, per_page=7)
            got += page["entries"]
            if page["next_before"] is None:
                break
            before = page["next_before"]
        assert got == want, f
    assert len([e for e in everything if _old_dataset_of(e) == "furnace"]) > 30  # pages really were paged


def test_dataset_and_model_history_equal_a_full_scan(busy_ws: Workspace) -> None:
    ws = busy_ws
    everything = _full_scan(ws)
    page = pages.dataset(ws, "furnace")
    assert [d["index"] for d in page["decisions"]] == [
        e.index for e in everything if e.entry.kind == "decision" and _old_dataset_of(e) == "furnace"]
    assert [c["index"] for c in page["copies"]] == [
        e.index for e in everything if e.entry.kind == "data.copy" and _old_dataset_of(e) == "furnace"]
    assert page["withdrawals"] and page["shredding"] and page["ingests"]
    assert {d["dataset"] for d in page["decisions"]} == {"furnace"}
    # the model page's query: evaluations and serve entries about one model, newest first
    model = [e.index for e in pages.entries_newest_first(ws, ("model.eval", "model.serve"), subject="model:arm-policy")]
    assert model == [e.index for e in everything if e.entry.kind in ("model.eval", "model.serve")
                     and e.entry.body.get("model") == "arm-policy"] and len(model) == 6
    assert list(pages.entries_newest_first(ws, subject="model:kiln")) == []  # a dataset's name is not a model


class _Steps:
    """Counts SQLite virtual machine instructions on every connection of an engine: the work a
    query does (each row it visits costs a few), whatever the load of the machine."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.n = engine, 0
        event.listen(engine, "checkout", self._arm)

    def _arm(self, dbapi_conn, _rec, _proxy) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.set_progress_handler(self._tick, 1)

    def _tick(self) -> int:
        self.n += 1
        return 0

    def count(self, fn) -> int:  # type: ignore[no-untyped-def]
        self.n = 0
        fn()
        return self.n


def test_governance_read_does_not_grow_with_the_ledger(ws: Workspace, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY_JP)
    datasets.ingest(ws, "furnace", "steelco", "sakai", policy, "furnace-line-3", [write_frames(tmp_path / "f.parquet")])
    ws.ledger.engine.dispose()  # every later connection is a counted one
    steps = _Steps(ws.ledger.engine)
    gov_before = read_governance(ws.ledger)
    assert ws.ledger_governance() == gov_before
    small = steps.count(lambda: read_governance(ws.ledger))
    kept_small = steps.count(ws.ledger_governance)
    scan_small = steps.count(lambda: list(ws.ledger.entries()))
    _pad(ws, "furnace", 3000)  # 3,000 decisions: none of them is governance
    gov_after = read_governance(ws.ledger)
    assert ws.ledger_governance() == gov_after
    big = steps.count(lambda: read_governance(ws.ledger))
    kept_big = steps.count(ws.ledger_governance)
    scan_big = steps.count(lambda: list(ws.ledger.entries()))
    event.remove(ws.ledger.engine, "checkout", steps._arm)
    assert gov_after.grants == gov_before.grants and gov_after.sites == gov_before.sites
    assert gov_after.size == gov_before.size + 3000
    # the workspace's reader reads only what was appended since its last read: a few probes
    assert kept_big - kept_small <= 20 and kept_big < small, (kept_small, kept_big, small)
    # and it sees what another process appends (here another open of the same workspace)
    other = Workspace.open(ws.root)
    datasets.withdraw(other, "furnace", "steelco")
    other.close()
    assert "furnace" in ws.ledger_governance().withdrawn and ws.ledger_governance() == read_governance(ws.ledger)
    # the counter sees reads: a scan of every entry grows with the 3,000 decisions...
    assert scan_big - scan_small > 3 * 3000, (scan_small, scan_big)
    # ...the governance read does not: the same entries read through the index of entries by kind
    assert big - small <= 20, (small, big)
