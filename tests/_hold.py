"""Hold a command between its ledger append and its catalog commit, where other processes can
see its entry without its rows (the window docs/residency.md's "Readers, while such commands
run" is about). Shared by tests/test_concurrency.py and tests/test_serve_live.py."""

from __future__ import annotations

import threading

from onshore.workspace import Workspace


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
