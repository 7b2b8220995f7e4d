"""Prometheus metrics of a workspace's ledger: its size, how far checkpoints lag, decisions by rule.

Read at scrape time by :class:`LedgerCollector` (registered in a server's own registry, never the
process-wide one). Decisions are counted incrementally: each scrape reads only the ``decision``
entries appended since the last, so a scrape does not grow with the ledger. Exposed by
``onshore serve``, ``onshore dashboard`` and the coordinator at ``/metrics`` (``docs/monitoring.md``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from onshore.ledger import checkpoint as ckpt
from onshore.ledger.log import Ledger


class LedgerCollector(Collector):
    """``onshore_ledger_*`` metrics of ``ledger`` (a workspace's, or the coordinator's; safe to
    scrape from several threads)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._scanned = 0
        self._decisions: Counter[tuple[str, str]] = Counter()

    def _count_decisions(self, size: int) -> None:
        for e in self.ledger.entries(self._scanned, size, kinds=("decision",)):
            body = e.entry.body
            outcome = str(body.get("decision", "?"))
            for rule in body.get("rules") or ["(none)"]:
                self._decisions[(outcome, str(rule))] += 1
        self._scanned = size

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            size = self.ledger.size()
            self._count_decisions(size)
            decisions = dict(self._decisions)
        note = self.ledger.checkpoint_note()
        covered = ckpt.parse(note.split("\n\n", 1)[0] + "\n").size if note else 0
        age = 0.0
        if covered < size:  # how long the oldest entry no checkpoint covers has waited for one
            first = next(self.ledger.entries(covered, covered + 1), None)
            if first is not None:
                age = max(0.0, time.time() - datetime.fromisoformat(first.entry.time).timestamp())
        yield GaugeMetricFamily("onshore_ledger_entries", "Entries in the transparency ledger.", value=size)
        yield GaugeMetricFamily("onshore_ledger_checkpoint_size", "Tree size of the newest signed checkpoint.",
                                value=covered)
        yield GaugeMetricFamily("onshore_ledger_uncheckpointed_entries",
                                "Entries no signed checkpoint covers yet.", value=size - covered)
        yield GaugeMetricFamily("onshore_ledger_checkpoint_age_seconds",
                                "Seconds the oldest entry no checkpoint covers has waited (0: all covered).",
                                value=round(age, 3))
        c = CounterMetricFamily("onshore_decisions", "Recorded residency decisions, by outcome and deciding rule.",
                                labels=["decision", "rule"])
        for (outcome, rule), n in sorted(decisions.items()):
            c.add_metric([outcome, rule], n)
        yield c
