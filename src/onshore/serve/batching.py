"""Batching the acts of many sessions into one forward pass, off the event loop.

Each session's ``act`` is submitted here and awaited; ``threads`` worker threads take what is
waiting and run it as one batch through ``run`` (the server passes
:func:`onshore.model.policy.act_batch`: one forward pass per model and embodiment, each session
keeping its own history, ensembling and, on the loop, its own envelope). A worker that finds
one request waiting while other sessions are active waits at most ``wait_s`` for them (their
requests tend to come within the same millisecond when they were waiting on a forward pass)
and never past ``max_batch`` or the number of active sessions that may still send one (those whose
act is in a batch running now cannot: each connection waits for its answer); with one active
session it runs at once, with no wait. Only one worker gathers at a time, so while one runs a batch the
next gathers the one after: requests that come during a forward pass make up the next batch.

``max_batch=1`` turns batching off: one forward pass per request, the server as it was before
batching (the bench's baseline). A policy never appears twice in one batch (its history needs
one state per step): a second request of the same policy waits for the next batch.

A batch that raises fails each of its requests with that error (the server answers each with
an ``internal`` error); the workers go on. This module imports neither torch nor the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("onshore.serve")

#: Runs a batch: (policies, states) -> one result per policy, in order.
RunBatch = Callable[[Sequence[Any], Sequence[Any]], Sequence[Any]]


@dataclass
class _Request:
    policy: Any
    state: Any
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[Any, float, int]]


@dataclass
class BatchStats:
    """What the batcher did: batches run, requests in them, the largest batch."""

    batches: int = 0
    requests: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> batches of that size


class Batcher:
    """Runs submitted (policy, state) requests in batches on ``threads`` worker threads.

    ``active()`` says how many sessions may send a request now (the gathering bound). Refused:
    ``threads`` < 1, ``max_batch`` < 1 or ``wait_s`` < 0 (``ValueError``), a submit after ``close``
    (``RuntimeError``)."""

    def __init__(self, run: RunBatch, active: Callable[[], int], threads: int = 2, wait_s: float = 0.001,
                 max_batch: int = 32, name: str = "onshore-infer") -> None:
        if threads < 1 or max_batch < 1 or wait_s < 0:
            raise ValueError(f"batcher needs threads >= 1, max_batch >= 1 and wait_s >= 0; got {threads}, "
                             f"{max_batch}, {wait_s}")
        self.run, self.active = run, active
        self.wait_s, self.max_batch = float(wait_s), int(max_batch)
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._carry: deque[_Request] = deque()  # a second request of a policy in the batch being gathered
        self._gather = threading.Lock()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._running = 0  # requests in batches being run now
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    async def act(self, policy: Any, state: Any) -> tuple[Any, float, int]:
        """``policy``'s result for ``state`` with the batch's forward time (ms) and size."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, float, int]] = loop.create_future()
        self._queue.put(_Request(policy, state, loop, fut))
        return await fut

    def close(self) -> None:
        """Stop the workers after the requests already submitted; idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)

    # -- worker side -----------------------------------------------------------------------------

    def _next(self, timeout: float | None) -> _Request | None:
        """The next request (carried over first); None on stop; raises queue.Empty on timeout."""
        if self._carry:
            return self._carry.popleft()
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _collect(self) -> list[_Request] | None:
        """One batch: the first request, then what comes within ``wait_s`` (bounded); None on stop."""
        with self._gather:
            first = self._next(None)
            if first is None:
                return None
            batch, seen = [first], {id(first.policy)}
            # sessions whose act is in a batch running now cannot send another before its answer: not waited for
            with self._stats_lock:
                running = self._running
            limit = min(self.max_batch, max(1, self.active() - running))
            deadline = time.monotonic() + self.wait_s
            deferred: list[_Request] = []
            while len(batch) < limit:
                try:
                    item = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if item is None:  # stopping: let the other workers see it too
                    self._queue.put(None)
                    break
                if id(item.policy) in seen:
                    deferred.append(item)
                    continue
                seen.add(id(item.policy))
                batch.append(item)
            self._carry.extend(deferred)
            with self._stats_lock:
                self._running += len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                results = list(self.run([r.policy for r in batch], [r.state for r in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
            except BaseException as e:  # each request fails with the batch; the worker goes on
                log.exception("a batch of %d act(s) failed", len(batch))
                with self._stats_lock:
                    self._running -= len(batch)
                _reply(batch, _fail, [e] * len(batch))
                continue
            ms = (time.perf_counter() - t0) * 1e3
            with self._stats_lock:
                self._running -= len(batch)
                st = self.stats
                st.batches += 1
                st.requests += len(batch)
                st.largest = max(st.largest, len(batch))
                st.sizes[len(batch)] = st.sizes.get(len(batch), 0) + 1
            _reply(batch, _done, [(res, ms, len(batch)) for res in results])


def _reply(batch: list[_Request], fn: Callable[[asyncio.Future[Any], Any], None], values: list[Any]) -> None:
    """Settle each request's future on its loop: one wake-up per loop for the whole batch.

    Waking a loop is a write to its self-pipe under the GIL; one per request made the replies of a
    batch of ten cost as much as a tenth of its forward pass."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for r, v in zip(batch, values, strict=True):
        by_loop.setdefault(r.loop, []).append((r.future, v))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, fn, pairs)
        except RuntimeError:  # the loop closed meanwhile (the server stopped): nobody waits for it
            pass


def _settle(fn: Callable[[asyncio.Future[Any], Any], None], pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, value in pairs:
        fn(fut, value)


def _done(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():  # the session may have gone away meanwhile
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error if isinstance(error, Exception) else RuntimeError(str(error)))
