"""Hold a command between its ledger append and its catalog commit, where other processes can
see its entry without its rows, or a reader between its ledger read and its catalog read (the
windows docs/residency.md's "Readers, while such commands run" is about). Shared by
tests/test_concurrency.py and tests/test_serve_live.py."""

from __future__ import annotations

import threading

import pytest

from onshore.workspace import Workspace, datasets


def hold_after_its_entry(ws: Workspace, held: threading.Event, go: threading.Event) -> None:
    """Make ``ws``'s next command stop right after appending its ledger entry (its catalog rows
    not yet committed, its catalog write turn still held): set ``held``, then wait for ``go``."""
    real = ws.record

    def record_then_wait(*a, **k):  # type: ignore[no-untyped-def]
        index = real(*a, **k)
        held.set()
        assert go.wait(60)
        return index

    ws.record = record_then_wait  # type: ignore[method-assign]


def hold_first_ingest_after_its_entries(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the first ingest in this process stop at ``ingest.ledgered`` (grant appended, catalog
    row not committed) until the second event is set; the first is set when it gets there."""
    held, go = threading.Event(), threading.Event()
    real = datasets.crash_point

    def pause(point: str) -> None:
        if point == "ingest.ledgered" and not held.is_set():
            held.set()
            assert go.wait(60)
        real(point)

    monkeypatch.setattr(datasets, "crash_point", pause)
    return held, go


def hold_after_its_ledger_read(ws: Workspace, held: threading.Event, go: threading.Event) -> None:
    """Make ``ws`` stop right after its next read of the ledger's governance, before whatever it
    reads next (the catalog, when it builds a decision point): set ``held``, then wait for ``go``."""
    real = ws.ledger_governance

    def read_then_wait():  # type: ignore[no-untyped-def]
        gov = real()
        if not held.is_set():
            held.set()
            assert go.wait(60)
        return gov

    ws.ledger_governance = read_then_wait  # type: ignore[method-assign]
