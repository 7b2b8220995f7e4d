"""Run independent jobs (episodes) in worker processes and get results back in order.

Workers are started with ``forkserver`` (``spawn`` where that is missing), never ``fork``:
MuJoCo and BLAS threads do not survive a fork reliably. Results come back in the order of the
inputs, whatever the number of workers and whoever ran what, which is what makes output
independent of it. The calling process works too (it has imported and built what the work
needs already), so two workers are this process and one more.

:class:`Workers` can be started before the work is known (evaluation starts them while it
decides on and opens the model), so the other processes' imports and set-up run beside this
process's own; :func:`map_ordered` is the one-off form.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
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


#: How long a map stopped early waits for the item this process's own thread is running.
LOCAL_STOP_S = 10.0


def shares(total: int, n: int) -> list[tuple[int, int]]:
    """The contiguous share ``[lo, hi)`` of ``total`` items each of ``n`` workers starts on
    (worker 0, this process, first); what ``Workers(warm=...)`` prepares each process for."""
    return [(k * total // n, (k + 1) * total // n) for k in range(n)]


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, chunksize: int = 1,
                preload: Sequence[str] = (), own_shares: bool = False) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by up to ``workers`` processes
    (:meth:`Workers.map_ordered` on workers started for this call alone; see there)."""
    n = min(check_workers(workers), max(1, len(items)))
    with Workers(n, preload) as pool:
        yield from pool.map_ordered(fn, items, progress, chunksize=chunksize, own_shares=own_shares)


def _serve(conn: Connection) -> None:
    """A worker process: run what the parent sends until it sends ``None``.

    A message is ``(tag, fn, items)``; the answer is ``(tag, results, error)``, the results of
    ``fn`` over ``items`` until one raised (and that error; an error that cannot be pickled is
    sent as its text). Ctrl-C is the parent's to handle: it stops this process when it stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        tag, fn, items = msg
        results, error = _chunk(fn, items)
        try:
            conn.send((tag, results, error))
        except Exception as e:  # a result or the error could not be pickled
            conn.send((tag, [], RuntimeError(f"a worker process could not send back its result: {e!r} "
                                             f"(after {error!r})" if error else
                                             f"a worker process could not send back its result: {e!r}")))


def _chunk(fn: Callable[[T], R], items: Sequence[T]) -> tuple[list[R], BaseException | None]:
    """A worker's job: ``fn`` over ``items`` until one raises (the results before it, and the error)."""
    out: list[R] = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as e:
            return out, e
    return out, None


class _Map:
    """One :meth:`Workers.map_ordered`: who runs which items, and what came back.

    Items sit in shares ``[lo, hi)``. With ``own_shares`` worker ``k`` starts on share ``k``
    (neighbouring items, so each process builds the environments and goal sets of few tasks),
    one item at a time; a worker whose share is done takes the last items of the share with
    the most left, so all finish within about one item of each other. Without, there is one
    share that every worker takes ``chunksize`` items from the front of, in order (results
    wait in memory only until their turn, about a chunk per worker: for large results such as
    telemetry). Nothing at or after an item that raised is handed out.
    """

    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any], n: int, chunksize: int,
                 own_shares: bool) -> None:
        self.fn, self.items, self.n = fn, items, n
        self.chunk = 1 if own_shares else max(1, chunksize)
        self.shares = [list(s) for s in shares(len(items), n)] if own_shares else [[0, len(items)]]
        self.own = own_shares
        self.limit = len(items)  # the first item that raised, or the end
        self.done: dict[int, tuple[list[Any], BaseException | None]] = {}  # start -> (results, error)
        self.finished = 0  # items back, for progress

    def unclaimed(self) -> int:
        return sum(max(0, min(hi, self.limit) - lo) for lo, hi in self.shares)

    def take(self, worker: int) -> tuple[int, int] | None:
        """The next items ``[lo, hi)`` for ``worker`` (called holding the lock), or ``None``."""
        share = self.shares[worker if self.own else 0]
        lo, hi = share[0], min(share[1], self.limit)
        if lo < hi:
            share[0] = min(lo + self.chunk, hi)
            return lo, share[0]
        left = [(min(s[1], self.limit) - s[0], i) for i, s in enumerate(self.shares)]
        most, i = max(left)
        if most <= 0:
            return None
        victim = self.shares[i]
        hi = min(victim[1], self.limit)
        lo = max(victim[0], hi - self.chunk)
        victim[1] = lo
        return lo, hi

    def put(self, lo: int, results: list[Any], error: BaseException | None) -> None:
        self.done[lo] = (results, error)
        self.finished += len(results)
        if error is not None:
            self.limit = min(self.limit, lo + len(results))


class Workers:
    """This process and ``n - 1`` worker processes, for one or more :meth:`map_ordered` calls.

    The processes start on threads of their own as soon as this object is made (the first
    ones through a forkserver that imports ``preload`` once: torch, MuJoCo, Meta-World), so
    the caller goes on with its own set-up meanwhile. ``warm`` = ``(fn, items)``: each worker
    process runs ``fn`` over its share of ``items`` (:func:`shares`) as soon as it is up, before
    any work: e.g. builds the environments and goal sets of the tasks it will run first. That
    is only an optimisation: an error there is dropped (the real work meets it again).
    ``preload`` takes effect when this process's forkserver starts (the first processes it
    makes). Use it as a context manager: leaving it stops the processes (at once after an
    error or Ctrl-C). ``n`` = 1: no other process; the work runs in the caller.
    """

    def __init__(self, n: int, preload: Sequence[str] = (),
                 warm: tuple[Callable[[Sequence[Any]], object], Sequence[Any]] | None = None) -> None:
        self.n = check_workers(n)
        self.cv = threading.Condition()
        self.closing = False
        self.job: _Map | None = None
        self.warm = None if warm is None else (warm[0], [warm[1][lo:hi] for lo, hi in shares(len(warm[1]), self.n)])
        self.procs: list[Any] = []
        self.drivers: list[threading.Thread] = []
        if self.n == 1:
            return
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.ctx = mp.get_context(method)
        if method == "forkserver" and preload:
            # __main__ first, as the default list has it: a script's own functions stay picklable
            self.ctx.set_forkserver_preload(["__main__", *preload])
        for k in range(1, self.n):
            t = threading.Thread(target=self._drive, args=(k,), name=f"onshore-worker-{k}", daemon=True)
            t.start()
            self.drivers.append(t)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(wait=exc_type is None)

    def map_ordered(self, fn: Callable[[T], R], items: Sequence[T],
                    progress: Callable[[int, int], None] | None = None, chunksize: int = 1,
                    own_shares: bool = False) -> Iterator[R]:
        """Yield ``fn(item)`` for each item, in order, computed by this process (on a thread of
        its own, with what it has imported, built and opened already) and the worker processes
        as each becomes ready.

        ``fn`` must be a module-level function or a picklable callable. ``progress(done,
        total)`` is called as results come back (in any order). ``own_shares``: each worker
        starts on its own contiguous share of the items, one at a time, and takes over the end
        of the largest share left when it is done (for small results: they wait in memory
        until their turn); else ``chunksize`` consecutive items at a time, in order (see
        :class:`_Map`). An item that raises raises here, when its turn comes, after the items
        before it; nothing after it is started.
        """
        total = len(items)
        if progress:
            progress(0, total)
        if self.n == 1 or total <= 1:
            for done, item in enumerate(items, 1):
                result = fn(item)
                if progress:
                    progress(done, total)
                yield result
            return
        job = _Map(fn, items, self.n, chunksize, own_shares)
        with self.cv:
            if self.job is not None:
                raise RuntimeError("one map at a time on a Workers")
            self.job = job
            self.cv.notify_all()
        local = threading.Thread(target=self._local, args=(job,), name="onshore-map-local", daemon=True)
        local.start()
        reported = 0
        try:
            pos = 0
            while pos < total:
                with self.cv:
                    if pos not in job.done:
                        self.cv.wait(0.5)  # woken by a result; the timeout lets Ctrl-C through
                    finished = job.finished
                    ready = job.done.pop(pos, None)
                if progress and finished != reported:  # outside the lock: a progress bar may be slow
                    reported = finished
                    progress(reported, total)
                if ready is None:
                    continue
                results, error = ready
                yield from results
                if error is not None:
                    raise error
                pos += len(results)
            local.join()
        finally:
            with self.cv:
                job.limit = 0  # hand nothing more out
                self.job = None
                self.cv.notify_all()
            # stopped early (an error, Ctrl-C): let this process's thread finish the item it holds, so
            # the interpreter does not exit under it (torch and MuJoCo abort the process then)
            local.join(timeout=LOCAL_STOP_S)

    def _local(self, job: _Map) -> None:
        """This process's part: items taken in turn with the worker processes."""
        while True:
            with self.cv:
                span = job.take(0)
            if span is None:
                return
            lo, hi = span
            try:
                result = _chunk(job.fn, job.items[lo:hi])
            except BaseException as e:  # SystemExit and the like: reported in its turn, never lost
                result = ([], e)
            with self.cv:
                job.put(lo, *result)
                self.cv.notify_all()

    def _drive(self, k: int) -> None:
        """Start worker process ``k`` (this blocks until the forkserver has imported its
        preload, hence a thread), warm it, then feed it items and collect its results."""
        parent, child = mp.Pipe()
        try:
            proc = self.ctx.Process(target=_serve, args=(child,), name=f"onshore-worker-{k}", daemon=True)
            proc.start()
        except Exception as e:  # no process: the others do the work; say why if nobody can
            with self.cv:
                self.procs.append(e)
                self.cv.notify_all()
            return
        finally:
            child.close()
        with self.cv:
            self.procs.append(proc)
            if self.closing:
                self._stop(parent, proc)
                return
        try:
            if self.warm is not None and len(self.warm[1][k]):
                parent.send(("warm", self.warm[0], [self.warm[1][k]]))
                parent.recv()
            self._feed_loop(k, parent, proc)
        except (EOFError, OSError):  # the process died: _feed_loop reported its items
            pass
        finally:
            with self.cv:
                self._stop(parent, proc)

    def _feed_loop(self, k: int, conn: Connection, proc: Any) -> None:
        sent: list[tuple[_Map, int]] = []  # items out to this process: (map, lo), in order
        while True:
            with self.cv:
                while not self.closing and self.job is None and not sent:
                    self.cv.wait()
                if self.closing and not sent:
                    return
                job = self.job
                # two out while plenty is left, so the process never waits for its next item
                if job is not None:
                    want = 2 if job.unclaimed() >= 2 * self.n else 1
                    while sum(1 for j, _ in sent if j is job) < want and (span := job.take(k)) is not None:
                        lo, hi = span
                        conn.send((lo, job.fn, list(job.items[lo:hi])))
                        sent.append((job, lo))
                if not sent:
                    # nothing for this process now: wait for the next map (or more to steal)
                    self.cv.wait(0.5)
                    continue
            try:
                lo, results, error = conn.recv()
            except (EOFError, OSError):
                proc.join(timeout=1.0)
                with self.cv:
                    died = RuntimeError(f"worker process {proc.pid} stopped (exit code {proc.exitcode}) "
                                        "before returning its results")
                    for j, s in sent:
                        j.put(s, [], died)
                    self.cv.notify_all()
                raise
            with self.cv:
                j, s = sent.pop(0)
                assert s == lo
                j.put(lo, results, error)
                self.cv.notify_all()

    def _stop(self, conn: Connection, proc: Any) -> None:
        try:
            conn.send(None)
        except OSError:
            pass
        conn.close()

    def close(self, wait: bool = True) -> None:
        """Stop the worker processes. Between maps they hold no work, so they stop at once; one
        still warming up (a run this process finished alone) is terminated rather than waited
        for, as is every one without ``wait`` (after an error or Ctrl-C). One still starting
        (the forkserver importing) is told to stop as soon as it is up."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        for t in self.drivers:
            t.join(timeout=1.0 if wait else 0.1)
        with self.cv:
            procs = [p for p in self.procs if not isinstance(p, BaseException)]
        for p in procs:
            p.join(timeout=1.0 if wait else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
