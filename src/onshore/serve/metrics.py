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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from onshore.serve.server import PolicyServer

#: Seconds; the goal a bench measures is 10 ms at the 99th percentile (docs/benchmarks.md).
ACT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
