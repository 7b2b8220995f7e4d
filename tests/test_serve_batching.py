"""Batched serving: the acts of many sessions in one forward pass give each session the action
it gets alone (its own history, ensembling and envelope), in process and through a real server
on 127.0.0.1; batching off is one forward pass per request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from _serving import EMBODIMENT, MODEL, TASK, furnace_workspace
from onshore.errors import ValidationError
from onshore.model.network import EmbodimentSpec, FoundationModel, model_config
from onshore.model.policy import FORMAT, LoadedModel, ModelPolicy, act_batch
from onshore.serve import Client, service, tokens
from onshore.serve import envelope as E
from onshore.serve.server import ServerLimits
from onshore.workspace import Workspace, models
from onshore.workspace.registry import get_embodiment

PACE = 0.2  # two control periods of the furnace: every step is one period's worth of max_rate, whatever the jitter
TASKS = ("reach the goal", "push the block", "open the drawer")


def _loaded(feedback: bool) -> LoadedModel:
    cfg = model_config("tiny", action_feedback=feedback)
    specs = [EmbodimentSpec("arm", 6, 2, (("a", (0, 1, 2)), ("b", (3, 4, 5))), (0.0,) * 6, (1.0,) * 6,
                            (-2.0,) * 2, (2.0,) * 2),
             EmbodimentSpec("plant", 4, 3, (("a", (0, 1)), ("b", (2, 3))), (1.0,) * 4, (3.0,) * 4,
                            (-1.0,) * 3, (1.0,) * 3)]
    torch.manual_seed(7)
    net = FoundationModel(cfg, specs).eval()
    rng = np.random.default_rng(1)
    vectors = {t: rng.standard_normal(cfg.text_dim).astype(np.float32) for t in TASKS}
    return LoadedModel(net, {"format": FORMAT, "text_encoder": "hashed-ngram"}, vectors)


@pytest.mark.parametrize("feedback", [False, True])
def test_a_batch_gives_each_policy_what_it_gets_alone(feedback: bool) -> None:
    loaded = _loaded(feedback)
    # sessions of two embodiments, three tasks, ensembling on and off, starting at different steps
    plan = [("arm", TASKS[0], None), ("arm", TASKS[1], False), ("plant", TASKS[2], None), ("arm", TASKS[2], None),
            ("plant", TASKS[0], False)]
    dims = {"arm": 6, "plant": 4}
    rng = np.random.default_rng(2)
    steps = 14
    states = [rng.uniform(-3, 3, size=(steps, dims[e])).astype(np.float32) for e, _, _ in plan]

    def policies() -> list[ModelPolicy]:
        out = []
        for emb, task, ens in plan:
            p = ModelPolicy(loaded, emb, ensemble=ens)
            p.reset(task)
            out.append(p)
        return out

    alone, together = policies(), policies()
    for k in range(steps):
        # session i joins at step i: batches mix fresh histories with long ones
        live = [i for i in range(len(plan)) if k >= i]
        expected = [alone[i].act(states[i][k]) for i in live]
        got = act_batch([together[i] for i in live], [states[i][k] for i in live])
        assert len(got) == len(live)
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    # and the batch is not trivially one session repeated: sessions differ
    last = act_batch(together[:2], [states[0][0], states[1][0]])
    assert not np.allclose(last[0], last[1])


def test_a_batch_refuses_a_policy_twice_or_not_reset() -> None:
    loaded = _loaded(False)
    p = ModelPolicy(loaded, "arm")
    p.reset(TASKS[0])
    s = np.zeros(6, dtype=np.float32)
    with pytest.raises(ValueError, match="twice"):
        act_batch([p, p], [s, s])
    fresh = ModelPolicy(loaded, "arm")
    t_before = p._t
    with pytest.raises(ValidationError, match="reset"):
        act_batch([p, fresh], [s, s])
    assert p._t == t_before  # nothing taken into the history of the other policy
    with pytest.raises(ValueError, match="states"):
        act_batch([p], [s, s])


@pytest.fixture(scope="module")
def served_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = furnace_workspace(tmp_path_factory.mktemp("serve-batch"))
    yield ws
    ws.close()


def _drive(url: str, toks: list[str], states: list[np.ndarray], rounds: int) -> list[list[np.ndarray]]:
    """Every client acts in lockstep (a barrier per step), so their acts reach the server together."""
    n = len(toks)
    got: list[list[np.ndarray] | Exception] = [[] for _ in range(n)]
    barrier = threading.Barrier(n)

    def drive(i: int) -> None:
        try:
            with Client(url, toks[i], EMBODIMENT) as c:
                c.reset(TASK)
                out = []
                for k in range(rounds):
                    barrier.wait(30)
                    out.append(c.act(states[i][k]))
                    time.sleep(PACE)
                got[i] = out
        except Exception as e:  # reported below
            barrier.abort()
            got[i] = e

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for g in got:
        assert not isinstance(g, Exception), g
    return got  # type: ignore[return-value]


@pytest.mark.parametrize("batch", [True, False])
def test_served_sessions_acting_together_get_what_each_gets_alone(served_ws: Workspace, batch: bool) -> None:
    loaded = models.load_model_for(served_ws, MODEL, "tokyo", "serve", "fine-tuning")
    emb = get_embodiment(served_ws, EMBODIMENT)
    n, rounds = 6, 8
    rng = np.random.default_rng(5)
    states = [rng.uniform([0, 0, 0], [1400, 1400, 25], size=(rounds, 3)).astype(np.float32) for _ in range(n)]
    # a generous gathering window so that lockstep clients meet in one batch even on a loaded machine
    limits = ServerLimits(batch=batch, batch_wait_s=0.05, infer_threads=1)
    with service.start(served_ws, MODEL, "tokyo", port=0, limits=limits) as run:
        toks = [tokens.issue(served_ws, "tokyo", f"batch-{str(batch).lower()}-{i}") for i in range(n)]
        run.server.tokens.refresh()
        got = _drive(run.url, toks, states, rounds)
        st = run.server.batcher.stats
    for i in range(n):  # in process, alone: the same model, one forward pass per step, an envelope per machine
        p, env = ModelPolicy(loaded, EMBODIMENT), E.Envelope(E.Limits.from_embodiment(emb))
        p.reset(TASK)
        expected = np.stack([env.command(p.act(s), now=k * PACE).action for k, s in enumerate(states[i])])
        np.testing.assert_allclose(np.stack(got[i]), expected, rtol=1e-5, atol=1e-4)
    assert st.requests == n * rounds
    if batch:
        assert st.largest > 1, st  # lockstep sessions did share forward passes
        assert st.batches < st.requests
    else:
        assert st.largest == 1 and st.batches == st.requests, st


def _batcher_run(run, active, n_requests, policies=None, **kw):  # type: ignore[no-untyped-def]
    """Submit ``n_requests`` acts at once to a Batcher over ``run``; its results and stats."""
    import asyncio

    from onshore.serve.batching import Batcher

    b = Batcher(run, lambda: active, **kw)

    async def go():  # type: ignore[no-untyped-def]
        pols = policies or [object() for _ in range(n_requests)]
        return await asyncio.gather(*(b.act(p, i) for i, p in enumerate(pols)), return_exceptions=True)

    try:
        return asyncio.run(go()), b.stats
    finally:
        b.close()


def test_the_batcher_gathers_waiting_acts_and_never_a_policy_twice() -> None:
    seen: list[list[int]] = []

    def run(policies, states):  # type: ignore[no-untyped-def]
        seen.append(list(states))
        time.sleep(0.02)  # acts that come meanwhile make up the next batch
        return [s * 10 for s in states]

    results, st = _batcher_run(run, active=8, n_requests=8, threads=1, wait_s=0.05)
    assert [r[0] for r in results] == [i * 10 for i in range(8)]  # each request gets its own result
    assert sorted(s for batch in seen for s in batch) == list(range(8)) and st.largest > 1
    assert all(r[2] == len(b) for b in seen for r in results if r[0] // 10 in b)  # sizes reported
    # one policy twice: never in one batch (its history takes one state per step), both answered in order
    seen.clear()
    p = object()
    results, st = _batcher_run(run, active=2, n_requests=2, policies=[p, p], threads=1, wait_s=0.05)
    assert [r[0] for r in results] == [0, 10] and seen == [[0], [1]]


def test_the_batcher_waits_for_no_one_with_one_session_and_turns_off() -> None:
    def run(policies, states):  # type: ignore[no-untyped-def]
        return list(states)

    t0 = time.perf_counter()
    results, st = _batcher_run(run, active=1, n_requests=1, threads=1, wait_s=5.0)
    assert time.perf_counter() - t0 < 2.0 and results[0][0] == 0 and st.batches == 1  # no 5 s wait
    results, st = _batcher_run(run, active=8, n_requests=8, threads=2, max_batch=1, wait_s=5.0)
    assert st.largest == 1 and st.batches == 8 and [r[0] for r in results] == list(range(8))


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = []

    def run(policies, states):  # type: ignore[no-untyped-def]
        calls.append(list(states))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return list(states)

    results, st = _batcher_run(run, active=1, n_requests=3, threads=1, wait_s=0.0)
    assert isinstance(results[0], RuntimeError)  # the first batch (one act: one active session)
    assert [r[0] for r in results[1:]] == [1, 2] and len(calls) == 3
