"""Prometheus metrics of the coordinator and the site nodes (issue 22): real processes on loopback,
scraped over mutual TLS with a consortium certificate, the series moving after real requests."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from onshore.errors import PolicyDenied
from onshore.parties import actions
from onshore.parties.kit import Kit
from onshore.parties.local import LocalConsortium, free_port
from onshore.tls import client_tls

JP_ONLY = ('jurisdictions = ["JP"]\nsites = []\npurposes = ["fine-tuning"]\nexpires = 2031-03-31\n'
           'derived_models = "keep"\n')
SITES = ("sakai", "tokyo", "ohio")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalConsortium, dict[str, str]]]:
    c = LocalConsortium.provision(tmp_path_factory.mktemp("metrics") / "dep")
    urls = {"coordinator": c.kit("coordinator:coordinator").coordinator_url + "/metrics"}
    try:
        c.start("coordinator:coordinator")
        for site in SITES:
            port = free_port()
            c.start(f"site:{site}", extra=("--metrics-port", str(port)))
            urls[site] = f"https://127.0.0.1:{port}/metrics"
        yield c, urls
    finally:
        c.stop()


def scrape(kit: Kit, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url``, fetched with ``kit``'s consortium certificate: (name, labels) -> value."""
    with urllib.request.urlopen(url, context=client_tls(kit.ca, kit.cert, kit.key), timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_consortium_certificate(dep: tuple[LocalConsortium, dict[str, str]]) -> None:
    c, urls = dep
    anonymous = ssl.create_default_context(cafile=str(c.kit("site:sakai").ca))  # trusts the CA, shows no cert
    for url in urls.values():
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(url, context=anonymous, timeout=10).read()


def test_coordinator_and_site_series_move_after_real_requests(dep: tuple[LocalConsortium, dict[str, str]],
                                                             tmp_path: Path) -> None:
    c, urls = dep
    auditor = c.kit("auditor:auditor")  # any consortium certificate opens /metrics; the auditor holds one
    before = {name: scrape(auditor, url) for name, url in urls.items()}
    n = 3000
    pq.write_table(pa.table({"episode_index": pa.array([0] * n, pa.int64()),
                             "frame_index": pa.array(range(n), pa.int64()),
                             "observation.state": pa.array([[float(i % 7), 1.0] for i in range(n)],
                                                           pa.list_(pa.float32()))}), tmp_path / "a.parquet")
    (tmp_path / "jp.toml").write_text(JP_ONLY)
    actions.ingest(c.kit("member:kansai-robotics"), "arms", [tmp_path / "a.parquet"], "sakai", tmp_path / "jp.toml")
    actions.copy(c.kit("site:tokyo"), "arms", "sakai")
    with pytest.raises(PolicyDenied):
        actions.copy(c.kit("site:ohio"), "arms", "sakai")
    after = {name: scrape(auditor, url) for name, url in urls.items()}

    co0, co = before["coordinator"], after["coordinator"]
    # ledger size and checkpoint lag: the grant, decisions, the ingest, the copy and key releases
    assert value(co, "onshore_ledger_entries") >= value(co0, "onshore_ledger_entries") + 6
    assert value(co, "onshore_ledger_uncheckpointed_entries") == value(co, "onshore_ledger_entries") \
        - value(co, "onshore_ledger_checkpoint_size")
    assert value(co, "onshore_ledger_checkpoint_age_seconds") > 0
    # decisions and refusals by rule: the US copy was refused by the dataset's jurisdictions rule
    assert value(co, "onshore_decisions_total", decision="deny", rule="dataset/arms/jurisdictions") \
        == value(co0, "onshore_decisions_total", decision="deny", rule="dataset/arms/jurisdictions") + 1
    allowed = {labels: v for (name, labels), v in co.items() if name == "onshore_decisions_total"
               and dict(labels)["decision"] == "allow" and dict(labels)["rule"].startswith("dataset/arms/")}
    assert allowed and min(allowed.values()) >= 1  # the ingest's and the copy's deciding rules
    # request latency by route template: three decisions (ingest, copy, refused copy), entries appended
    decide = {"route": "/v1/decide", "method": "POST", "status": "200"}
    assert value(co, "onshore_coordinator_request_seconds_count", **decide) \
        == value(co0, "onshore_coordinator_request_seconds_count", **decide) + 3
    assert value(co, "onshore_coordinator_request_seconds_sum", **decide) > 0
    assert value(co, "onshore_coordinator_request_seconds_count", route="/v1/entries", method="POST",
                 status="200") >= 3

    sakai, tokyo, ohio = after["sakai"], after["tokyo"], after["ohio"]
    assert value(sakai, "onshore_site_ingested_frames_total") == n
    stored = value(sakai, "onshore_site_stored_bytes")
    assert stored > 0 and value(sakai, "onshore_site_ingested_bytes_total") == stored
    assert value(sakai, "onshore_site_copies_total", direction="sent") == 1
    assert value(sakai, "onshore_site_copied_bytes_total", direction="sent") == stored
    assert value(sakai, "onshore_site_call_seconds_count", call="DoPut", outcome="ok") == 1
    assert value(tokyo, "onshore_site_copies_total", direction="received") == 1
    assert value(tokyo, "onshore_site_copied_bytes_total", direction="received") == stored
    assert value(tokyo, "onshore_site_stored_frames") == n and value(tokyo, "onshore_site_datasets") == 1
    assert value(tokyo, "onshore_site_call_seconds_count", call="DoAction:pull", outcome="ok") == 1
    # the refused copy: ohio's pull was denied by the decision, and nothing arrived there
    assert value(ohio, "onshore_site_call_seconds_count", call="DoAction:pull", outcome="denied") == 1
    assert value(ohio, "onshore_site_copies_total", direction="received") == 0
    assert value(ohio, "onshore_site_stored_bytes") == 0
