"""Run independent jobs (episodes) in worker processes and get results back in order.

Workers are started with ``forkserver`` (``spawn`` where that is missing), never ``fork``:
MuJoCo and BLAS threads do not survive a fork reliably. Results come back in the order of the
inputs, whatever the number of workers, which is what makes output independent of it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from onshore.errors import ValidationError

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_workers(workers: int | None) -> int:
    """``workers`` or all cores when ``None``; refuses a number below 1."""
    if workers is None:
        return default_workers()
    if workers < 1:
        raise ValidationError(f"--workers must be at least 1, got {workers}")
    return int(workers)


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, chunksize: int = 1) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by up to ``workers`` processes.

    ``fn`` must be a module-level function (it is pickled by name). ``progress(done, total)``
    is called after each result. ``chunksize`` consecutive items go to one worker at a time
    (larger chunks let a worker reuse what it built for neighbouring items; results and their
    order do not change). One worker runs in this process, with no pool.
    """
    n = min(check_workers(workers), max(1, len(items)))
    total = len(items)
    if progress:
        progress(0, total)
    if n == 1:
        for done, item in enumerate(items, 1):
            result = fn(item)
            if progress:
                progress(done, total)
            yield result
        return
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(n) as pool:
        for done, result in enumerate(pool.imap(fn, items, chunksize=max(1, chunksize)), 1):
            if progress:
                progress(done, total)
            yield result
