"""Worker processes (onshore.sim.parallel): results in order whoever ran them, each process on its
own share first and then helping with the rest, errors and a dying process raised in their turn."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from onshore.sim.parallel import Workers, map_ordered, shares


def _note_warm(items: list[tuple]) -> None:
    """Warm-up: say which process got which items (the test waits for this file)."""
    folder = Path(items[0][0])
    (folder / "warm.json.tmp").write_text(json.dumps({"pid": os.getpid(), "items": [it[1] for it in items]}))
    (folder / "warm.json.tmp").replace(folder / "warm.json")


def _who(item: tuple[str, int]) -> tuple[int, int]:
    """An item of the second half takes a while, so the first half's worker must help with it."""
    _, i = item
    if i >= 5:
        time.sleep(0.5)
    return i * i, os.getpid()


def _fails_at_3(i: int) -> int:
    if i == 3:
        raise ValueError("item 3 is bad")
    return i


def _dies_at_5(item: tuple[str, int, int]) -> int:
    """Item 5 ends the worker process that runs it (never the test's own); the rest take a while."""
    _, i, parent = item
    if i == 5 and os.getpid() != parent:
        os._exit(3)
    if i >= 5:
        time.sleep(0.5)
    return i


def _started(folder: Path, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while not (folder / "warm.json").exists():
        assert time.monotonic() < deadline, "the worker process never started"
        time.sleep(0.05)
    return json.loads((folder / "warm.json").read_text())


def test_shares_cover_every_item_once():
    assert shares(10, 2) == [(0, 5), (5, 10)]
    assert shares(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert [i for lo, hi in shares(50, 4) for i in range(lo, hi)] == list(range(50))


def test_each_worker_starts_on_its_own_share_then_helps_with_the_rest(tmp_path):
    items = [(str(tmp_path), i) for i in range(10)]
    with Workers(2, warm=(_note_warm, items)) as pool:
        warm = _started(tmp_path)
        seen: list[tuple[int, int]] = []
        out = list(pool.map_ordered(_who, items, progress=lambda done, total: seen.append((done, total)),
                                    own_shares=True))
    child = warm["pid"]
    assert child != os.getpid() and warm["items"] == [5, 6, 7, 8, 9]  # warmed for its own share
    assert [r for r, _ in out] == [i * i for i in range(10)]  # in order, whoever ran them
    ran_by = [pid for _, pid in out]
    assert set(ran_by[:5]) == {os.getpid()}  # this process's share, done here
    assert ran_by[5] == child  # the worker process starts at the front of its share...
    assert ran_by[9] == os.getpid()  # ...and this process, done with its own, takes the end of it
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_results_do_not_depend_on_the_number_of_workers_or_the_schedule():
    items = list(range(-11, 12))
    for workers in (1, 2, 3):
        for own in (False, True):
            got = list(map_ordered(abs, items, workers, chunksize=4, own_shares=own))
            assert got == [abs(i) for i in items], (workers, own)


def test_an_item_that_raises_raises_in_its_turn(tmp_path):
    got: list[int] = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for r in map_ordered(_fails_at_3, list(range(8)), 2, own_shares=True):
            got.append(r)
    assert got == [0, 1, 2]  # the items before it, and nothing after


def test_a_worker_process_that_dies_is_an_error_not_a_hang(tmp_path):
    items = [(str(tmp_path), i, os.getpid()) for i in range(10)]
    got: list[int] = []
    with pytest.raises(RuntimeError, match="worker process .* stopped"):
        with Workers(2, warm=(_note_warm, items)) as pool:
            _started(tmp_path)
            for r in pool.map_ordered(_dies_at_5, items, own_shares=True):
                got.append(r)
    assert got == [0, 1, 2, 3, 4]
