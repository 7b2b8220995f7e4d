"""Prometheus /metrics of `onshore serve` (scraped over loopback HTTP from a running server) and of
the dashboard: counters that follow what happened, decisions by rule as the ledger records them."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from _serving import EMBODIMENT, MODEL, TASK, furnace_workspace
from onshore.residency.pdp import Request
from onshore.serve import Client, ServeError, service, tokens
from onshore.serve.server import ServerLimits
from onshore.web.app import create_app
from onshore.workspace import Workspace

STATE = np.array([600.0, 640.0, 4.0], dtype=np.float32)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels (parsed by prometheus_client)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(r.read().decode())


def decisions_in(ws: Workspace) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for e in ws.ledger.entries(kinds=("decision",)):
        for rule in e.entry.body["rules"] or ["(none)"]:
            key = (e.entry.body["decision"], rule)
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    w = furnace_workspace(tmp_path_factory.mktemp("metrics"))
    yield w
    w.close()


def test_serve_metrics_follow_acts_refusals_and_the_ledger(ws: Workspace) -> None:
    with service.start(ws, MODEL, "tokyo", port=0, limits=ServerLimits(act_hz=1000.0)) as run:
        base = f"http://127.0.0.1:{run.port}/metrics"
        before = scrape(base)
        assert before[("onshore_serve_actions_total", ())] == 0 and before[("onshore_serve_sessions", ())] == 0
        tok = tokens.issue(ws, "tokyo", "line-9")
        run.server.tokens.refresh()
        with pytest.raises(ServeError, match="401"):
            Client(run.url, "not-a-token", EMBODIMENT)
        with Client(run.url, tok, EMBODIMENT) as c:
            c.reset(TASK)
            for k in range(5):
                c.act(STATE + k)
            during = scrape(base)
            assert during[("onshore_serve_sessions", ())] == 1
        after = scrape(base)
        assert after[("onshore_serve_actions_total", ())] == 5
        assert after[("onshore_serve_act_seconds_count", ())] == 5
        # one session: every act its own forward pass (no batch waits on sessions that are not there)
        assert after[("onshore_serve_batches_total", ())] == after[("onshore_serve_batched_acts_total", ())] == 5
        assert 0 < after[("onshore_serve_act_seconds_sum", ())] < 5
        assert after[("onshore_serve_refusals_total", (("reason", "unknown token"),))] == 1
        assert after[("onshore_serve_connections_total", ())] == 1
        assert after[("onshore_serve_interventions_total", (("kind", "rate"),))] >= 1  # ramped from rest
        assert after[("onshore_serve_refusing", ())] == 0
        # the ledger as it is: every decision by outcome and rule, the size and the checkpoint lag
        ws.decide(Request("site:tokyo", "copy", "furnace", "ohio", "fine-tuning"))  # a recorded deny
        ledger = scrape(base)
        size = ws.ledger.size()
        assert ledger[("onshore_ledger_entries", ())] == size
        assert ledger[("onshore_ledger_checkpoint_size", ())] + ledger[("onshore_ledger_uncheckpointed_entries", ())] \
            == size
        got = {(dict(k[1])["decision"], dict(k[1])["rule"]): int(v) for k, v in ledger.items()
               if k[0] == "onshore_decisions_total"}
        assert got == decisions_in(ws) and any(d == "deny" for d, _ in got)
        ws.make_checkpoint()
        covered = scrape(base)
        assert covered[("onshore_ledger_uncheckpointed_entries", ())] == 0
        assert covered[("onshore_ledger_checkpoint_age_seconds", ())] == 0
        # no token is needed, and nothing secret is in it
        assert tok not in urllib.request.urlopen(base, timeout=10).read().decode()


def test_dashboard_metrics_behind_its_token_gate(ws: Workspace) -> None:
    app = create_app(ws.root)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)
        assert got[("onshore_ledger_entries", ())] == ws.ledger.size()
        assert sum(v for k, v in got.items() if k[0] == "onshore_decisions_total") == \
            sum(decisions_in(ws).values())
        # request latency by route template: two dataset pages count under one series
        assert c.get("/datasets/no-such-one").status_code == 404
        assert c.get("/datasets/nor-this-one?format=json").status_code == 404
        assert c.get("/../../etc/passwd").status_code == 404
        got = samples(c.get("/metrics").text)
        page = (("method", "GET"), ("route", "/datasets/{name:str}"), ("status", "404"))
        assert got[("onshore_dashboard_request_seconds_count", page)] == 2
        assert got[("onshore_dashboard_request_seconds_sum", page)] > 0
        assert got[("onshore_dashboard_request_seconds_count",
                    (("method", "GET"), ("route", "/metrics"), ("status", "200")))] == 1
        assert not [k for k in got if "passwd" in str(k)]  # a raw path never becomes a label
    app.state.workspace.close()
    from onshore.web import access

    token = access.issue_token(ws)
    app = create_app(ws.root, access.required_digest(ws, "0.0.0.0"), host="0.0.0.0")
    with TestClient(app, base_url="http://192.0.2.10") as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    app.state.workspace.close()

