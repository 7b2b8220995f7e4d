"""Run independent jobs (episodes) in worker processes and get results back in order.

Workers are started with ``forkserver`` (``spawn`` where that is missing), never ``fork``:
MuJoCo and BLAS threads do not survive a fork reliably. Results come back in the order of the
inputs, whatever the number of workers, which is what makes output independent of it. The
calling process works too (it has imported and built what the work needs already), so two
workers are this process and one more.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

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


#: Jobs a worker process should get at the least when the caller leaves the count to us: a worker
#: pays seconds to start (imports, environments, goal sets, opening a model), so a small job runs
#: on fewer processes (see :func:`workers_for`).
MIN_JOBS_PER_WORKER = 4


def workers_for(jobs: int, workers: int | None) -> int:
    """How many processes a run of ``jobs`` jobs uses: ``workers`` when given (at most one per
    job), else all cores but no more than one per ``MIN_JOBS_PER_WORKER`` jobs. Refuses a
    ``workers`` below 1 (``ValidationError``)."""
    n = check_workers(workers)
    if workers is None:
        n = min(n, max(1, jobs // MIN_JOBS_PER_WORKER))
    return max(1, min(n, jobs))


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, chunksize: int = 1,
                preload: Sequence[str] = ()) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by up to ``workers`` processes.

    ``fn`` must be a module-level function (it is pickled by name). ``progress(done, total)``
    is called after each result. ``chunksize`` consecutive items go to one process at a time
    (larger chunks let a process reuse what it built for neighbouring items; results and their
    order do not change). This process is one of the ``workers``: it takes chunks on a thread of
    its own, with what it has imported, built and opened already, while ``workers - 1`` others
    start; each takes the next chunk when it is free, so a process that started late does less.
    ``preload`` names modules the forkserver imports once, before it forks the other processes
    (heavy imports: torch, MuJoCo, Meta-World), so they do not import them each; it takes effect
    when this process's forkserver starts (the first pool it makes). An item that raises raises
    here, when its turn comes, after the items before it.
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
    yield from _Pooled(fn, items, n, max(1, chunksize), preload).run(progress)


def _chunk(fn: Callable[[T], R], items: Sequence[T]) -> tuple[list[R], BaseException | None]:
    """A worker's job: ``fn`` over ``items`` until one raises (the results before it, and the error)."""
    out: list[R] = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as e:
            return out, e
    return out, None


class _Pooled:
    """One run of :func:`map_ordered` over this process (a thread) and ``n - 1`` worker processes."""

    def __init__(self, fn: Callable[[T], R], items: Sequence[T], n: int, chunksize: int,
                 preload: Sequence[str]) -> None:
        self.fn, self.items, self.n, self.preload = fn, items, n, preload
        self.chunks = [(i, min(i + chunksize, len(items))) for i in range(0, len(items), chunksize)]
        self.next = 0  # the next chunk to hand out
        self.done: dict[int, tuple[list[Any], BaseException | None]] = {}
        self.cv = threading.Condition()
        self.stop = False
        self.outstanding = 0  # chunks given to worker processes and not back yet

    def _take(self) -> int | None:
        with self.cv:
            if self.stop or self.next >= len(self.chunks):
                return None
            self.next += 1
            return self.next - 1

    def _local(self) -> None:
        """This process's share: chunks taken in turn with the worker processes."""
        while (c := self._take()) is not None:
            lo, hi = self.chunks[c]
            try:
                result = _chunk(self.fn, self.items[lo:hi])
            except BaseException as e:  # SystemExit and the like: reported in its turn, never lost
                result = ([], e)
            with self.cv:
                self.done[c] = result
                self.cv.notify_all()

    def _back(self, c: int, fut: Future[tuple[list[Any], BaseException | None]]) -> None:
        try:
            result = fut.result()
        except BaseException as e:  # the worker process died or the chunk could not be pickled
            result = ([], e)
        with self.cv:
            self.done[c] = result
            self.outstanding -= 1
            self.cv.notify_all()

    def run(self, progress: Callable[[int, int], None] | None) -> Iterator[Any]:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver" and self.preload:
            # __main__ first, as the default list has it: a script's own functions stay picklable
            ctx.set_forkserver_preload(["__main__", *self.preload])
        total = len(self.items)
        local = threading.Thread(target=self._local, name="onshore-map-local", daemon=True)
        pool = ProcessPoolExecutor(self.n - 1, mp_context=ctx)
        finished = False
        try:
            local.start()
            yielded = 0
            for c in range(len(self.chunks)):
                with self.cv:
                    while c not in self.done:
                        self._feed(pool)
                        self.cv.wait(0.5)  # woken by a result; the timeout lets Ctrl-C through
                    results, error = self.done.pop(c)
                    self._feed(pool)
                for r in results:
                    yielded += 1
                    if progress:
                        progress(yielded, total)
                    yield r
                if error is not None:
                    raise error
            local.join()
            finished = True
        finally:
            with self.cv:
                self.stop = True
            # stopped early (an error, Ctrl-C, a caller that stopped reading): do not wait for chunks
            pool.shutdown(wait=finished, cancel_futures=True)

    def _feed(self, pool: ProcessPoolExecutor) -> None:
        """Give each idle worker process the next chunk (called holding ``cv``)."""
        while not self.stop and self.outstanding < self.n - 1 and self.next < len(self.chunks):
            c = self.next
            self.next += 1
            self.outstanding += 1
            lo, hi = self.chunks[c]
            fut = pool.submit(_chunk, self.fn, list(self.items[lo:hi]))
            fut.add_done_callback(lambda f, c=c: self._back(c, f))
