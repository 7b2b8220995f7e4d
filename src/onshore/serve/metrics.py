"""Prometheus metrics of a policy server, read from its counters at scrape time.

``GET /metrics`` on ``onshore serve`` answers in Prometheus' text format without a token, as
``/healthz`` does: aggregate counts only, never a token, a state or an action. Each server has its
own registry (two servers in one process never share counters). What is exported:
``onshore_serve_connections_total``, ``onshore_serve_sessions``, ``onshore_serve_actions_total``,
``onshore_serve_batches_total`` and ``onshore_serve_batched_acts_total`` (forward passes and the acts
they answered), ``onshore_serve_act_seconds`` (histogram: from a well-formed ``act`` to its command, inference and
envelope included), ``onshore_serve_refusals_total{reason}``, ``onshore_serve_errors_total``,
``onshore_serve_rate_limited_total``, ``onshore_serve_dropped_total``,
``onshore_serve_interventions_total{kind}``, ``onshore_serve_refusing`` (1 once serving was
refused). The serving process adds its workspace's ledger metrics
(:mod:`onshore.workspace.metrics`). This module imports neither torch nor the workspace.

The other parties' endpoints reuse what is here: ``RouteTimer`` (a latency histogram by route for
the Starlette apps: the dashboard, the coordinator) and ``SiteMetrics`` (a site node's
counters; ``onshore.parties.site``). ``docs/monitoring.md`` lists every series.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from onshore.serve.server import PolicyServer

#: Seconds; the goal a bench measures is 10 ms at the 99th percentile (docs/benchmarks.md).
ACT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds; for a request to the dashboard, the coordinator or a site node.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
_Scope = MutableMapping[str, Any]
_Call = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def request_histogram(prefix: str, registry: CollectorRegistry) -> Histogram:
    """``PREFIX_request_seconds{route, method, status}`` in ``registry``."""
    return Histogram(f"{prefix}_request_seconds", "Time to answer a request, by route, method and status.",
                     ["route", "method", "status"], buckets=REQUEST_BUCKETS, registry=registry)


class RouteTimer:
    """ASGI middleware observing each HTTP request's duration in ``histogram``, labelled by the
    route *template* it matched (``/datasets/{name:str}``), never by the raw path: a client
    sending hostile paths must not mint a series per path (``(unmatched)`` for those)."""

    def __init__(self, app: Callable[[_Scope, _Call, _Send], Awaitable[None]], routes: Sequence[Any],
                 histogram: Histogram) -> None:
        from starlette.routing import Match  # only the HTTP parties need it

        self.app, self.routes, self.histogram, self._full = app, routes, histogram, Match.FULL

    def _route(self, scope: _Scope) -> str:
        partial = None
        for r in self.routes:
            match, _ = r.matches(scope)
            if match == self._full:
                return str(r.path)
            if match.value and partial is None:  # the path matched, the method did not
                partial = str(r.path)
        return partial or "(unmatched)"

    async def __call__(self, scope: _Scope, receive: _Call, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, status = self._route(scope), "500"

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.histogram.labels(route, scope.get("method", "?"), status).observe(time.perf_counter() - started)


class SiteMetrics:
    """A site node's registry: calls by Flight method and outcome with their latency, what was
    ingested (frames, stored bytes), copies sent and received (and their bytes), and ``extra``
    collectors (what it holds, read at scrape time)."""

    def __init__(self, extra: tuple[Collector, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.call_seconds = Histogram("onshore_site_call_seconds",
                                      "Time to answer a Flight call (DoGet: until its stream starts), by call and "
                                      "outcome.", ["call", "outcome"], buckets=REQUEST_BUCKETS, registry=r)
        self.ingested_frames = Counter("onshore_site_ingested_frames", "Frames ingested and stored here.", registry=r)
        self.ingested_bytes = Counter("onshore_site_ingested_bytes", "Bytes of encrypted shards ingested and stored "
                                      "here.", registry=r)
        self.copies = Counter("onshore_site_copies", "Copies of a dataset completed, by direction.", ["direction"],
                              registry=r)
        self.copied_bytes = Counter("onshore_site_copied_bytes", "Bytes of encrypted shards copied, by direction.",
                                    ["direction"], registry=r)
        for direction in ("sent", "received"):
            self.copies.labels(direction)
            self.copied_bytes.labels(direction)
        for c in extra:
            self.registry.register(c)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class ServerCollector(Collector):
    def __init__(self, server: PolicyServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        st = self.server.stats
        yield CounterMetricFamily("onshore_serve_connections", "Connections accepted.", value=st.connections)
        yield GaugeMetricFamily("onshore_serve_sessions", "Open connections.", value=self.server.session_count())
        yield CounterMetricFamily("onshore_serve_actions", "Commands answered.", value=st.actions)
        batches = self.server.batcher.stats
        yield CounterMetricFamily("onshore_serve_batches", "Forward passes run (each for one batch of acts).",
                                  value=batches.batches)
        yield CounterMetricFamily("onshore_serve_batched_acts", "Acts answered by those forward passes.",
                                  value=batches.requests)
        yield CounterMetricFamily("onshore_serve_errors", "Requests answered with an error.", value=st.errors)
        yield CounterMetricFamily("onshore_serve_rate_limited", "Acts refused for their rate.", value=st.rate_limited)
        yield CounterMetricFamily("onshore_serve_dropped", "Messages dropped over a connection's budget.",
                                  value=st.dropped)
        refusals = CounterMetricFamily("onshore_serve_refusals", "Refused connections and sessions, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(st.refusal_counts.items()):
            refusals.add_metric([reason], n)
        yield refusals
        kinds = CounterMetricFamily("onshore_serve_interventions", "Safety envelope interventions, by kind.",
                                    labels=["kind"])
        for kind, n in sorted(st.interventions.items()):
            kinds.add_metric([kind], n)
        yield kinds
        yield GaugeMetricFamily("onshore_serve_refusing", "1 once serving was refused while running.",
                                value=0 if self.server.refusal is None else 1)


class ServerMetrics:
    """A server's registry: its collector, the act latency histogram and any ``extra`` collectors."""

    def __init__(self, server: PolicyServer, extra: tuple[Collector, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(server))
        self.act_seconds = Histogram("onshore_serve_act_seconds", "Time from a well-formed act to its command.",
                                     buckets=ACT_BUCKETS, registry=self.registry)
        for c in extra:
            self.registry.register(c)

    def text(self) -> bytes:
        """The exposition (reads the ledger when a ledger collector is registered: call off the loop)."""
        return generate_latest(self.registry)
