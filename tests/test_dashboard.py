"""The residency dashboard: routes and JSON with Starlette's TestClient, access by token, escaping,
and real browser tests (Debian's headless Chromium driven by Selenium) over a demo-like workspace."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

from _dashboard import HOSTILE, build, tampered
from onshore.attest.trust import TrustRoot
from onshore.attest.verify import verify_bundle
from onshore.cli.app import main
from onshore.errors import ValidationError
from onshore.web import access
from onshore.web.app import create_app
from onshore.workspace import Workspace, datasets, models

DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory,
         telemetry: dict[str, Path]) -> Iterator[tuple[Workspace, Path, Path]]:
    root = tmp_path_factory.mktemp("dash")
    ws, bundle, trust = build(root, telemetry)
    yield ws, bundle, trust
    ws.close()


@pytest.fixture(scope="module")
def client(demo: tuple[Workspace, Path, Path]) -> Iterator[TestClient]:
    app = create_app(demo[0].root)
    with TestClient(app) as c:
        yield c
    app.state.workspace.close()


# -- routes and JSON ----------------------------------------------------------------------------

def test_json_pages_carry_the_cli_fields(client: TestClient, demo: tuple[Workspace, Path, Path]) -> None:
    ws = demo[0]
    d = client.get("/datasets/arms", headers={"Accept": "application/json"}).json()
    cli = json.loads(json.dumps(datasets.show(ws, "arms")))
    assert {k: d[k] for k in cli} == cli  # every field of `onshore dataset show --json`, same values
    assert {s["site"] for s in d["shards"]} == {"sakai", "tokyo"}
    refused = [r for r in d["decisions"] if r["decision"] == "deny"]
    assert refused and refused[0]["site"] == "ohio" and refused[0]["site_jurisdiction"] == "US"
    assert any("jurisdictions" in rule for rule in refused[0]["rules"])
    assert [c["to"] for c in d["copies"]] == ["tokyo"] and d["key_releases"]
    assert [m["model"] for m in d["derived_models"]] == ["pool"] and d["derived_models"][0]["status"] == "ok"

    m = client.get("/models/pool?format=json").json()
    cli_m = json.loads(json.dumps(models.show_model(ws, "pool")))
    assert {k: m[k] for k in cli_m} == cli_m
    assert m["site"] == "sakai" and m["status"]["label"] == "ok"

    o = client.get("/?format=json").json()
    by_code = {j["code"]: j for j in o["jurisdictions"]}
    assert set(by_code) == {"JP", "US"} and by_code["US"]["country"] == "United States"
    sakai = next(s for s in by_code["JP"]["sites"] if s["name"] == "sakai")
    assert sakai["datasets"] == 2 and sakai["frames"] > 0 and [x["name"] for x in sakai["models"]] == ["pool"]
    assert [r["site"] for r in o["refusals_last_day"]] == ["ohio"]

    lg = client.get("/ledger", headers={"Accept": "application/json"}).json()
    assert lg["size"] == ws.ledger.size() and lg["witnesses"][0]["last_cosigned"] is not None
    entries = lg["log"]["entries"]
    assert entries[0]["index"] == ws.ledger.size() - 1  # newest first
    cli_entry = {"index": entries[0]["index"], **ws.ledger.get(entries[0]["index"]).entry.to_json()}
    assert entries[0] == cli_entry  # the shape `onshore ledger log --json` prints


def test_ledger_log_filters_and_pages(client: TestClient) -> None:
    page = client.get("/ledger?format=json&kind=decision&dataset=arms&per_page=2").json()["log"]
    assert len(page["entries"]) == 2 and all(e["kind"] == "decision" for e in page["entries"])
    older = client.get(f"/ledger?format=json&kind=decision&dataset=arms&per_page=2&before={page['next_before']}"
                       ).json()["log"]
    assert older["entries"][0]["index"] < page["entries"][-1]["index"]
    site = client.get("/ledger?format=json&site=ohio&per_page=500").json()["log"]["entries"]
    assert site and all("ohio" in json.dumps(e["body"]) for e in site)
    actor = client.get("/ledger?format=json&actor=site:tokyo&per_page=500").json()["log"]["entries"]
    assert actor and {e["actor"] for e in actor} == {"site:tokyo"}
    future = client.get("/ledger?format=json&since=2999-01-01").json()["log"]["entries"]
    assert future == []
    assert client.get("/ledger?before=x").status_code == 400


def test_background_verification_reports_progress_and_result(demo: tuple[Workspace, Path, Path]) -> None:
    app = create_app(demo[0].root)
    with TestClient(app) as c:
        assert c.post("/ledger/verify", headers={"Accept": "application/json"}).status_code == 200
        app.state.verifier.wait(60)
        v = c.get("/ledger/verify").json()
        assert v["state"] == "ok" and v["done"] == v["total"] == demo[0].ledger.size() == v["size"]
        cli = demo[0].verify_ledger()
        assert v["ok"] and v["root"] == cli.root.hex() and v["signatures_checked"] == cli.signatures_checked
    app.state.workspace.close()


def test_verify_page_runs_the_offline_checks(client: TestClient, demo: tuple[Workspace, Path, Path],
                                             tmp_path: Path) -> None:
    _, bundle, trust = demo
    files = {"bundle": ("b.json", bundle.read_bytes()), "trust_root": ("t.json", trust.read_bytes())}
    good = client.post("/verify?format=json", files=files, data={"min_witnesses": "1"}).json()
    assert good == verify_bundle(bundle.read_bytes(), TrustRoot.load(trust), 1).to_json() and good["ok"]
    bad = tampered(bundle, tmp_path / "bad.json")
    files["bundle"] = ("b.json", bad.read_bytes())
    out = client.post("/verify?format=json", files=files).json()
    assert not out["ok"] and "envelope" in " ".join(out["failed"])
    assert client.post("/verify", files={"bundle": ("b", b"{}")}).status_code == 400


def test_dataset_bundle_link_records_one_attestation(client: TestClient, demo: tuple[Workspace, Path, Path]) -> None:
    ws = demo[0]
    before = ws.ledger.size()
    r = client.get("/datasets/arms/bundle")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    assert verify_bundle(r.content, TrustRoot.load(demo[2])).ok
    assert ws.ledger.size() == before + 1 and ws.ledger.get(before).entry.kind == "data.attest"
    # every other page only reads
    for url in ("/", "/datasets/arms", "/models/pool", "/ledger?kind=decision", "/verify"):
        assert client.get(url).status_code == 200
    assert ws.ledger.size() == before + 1


def test_hostile_names_render_as_text(client: TestClient) -> None:
    html = client.get("/").text
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "堺" in html and "<b>" not in html
    for url in ("/datasets/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/models/%22%3E%3Cimg%20src=x%3E",
                "/ledger?actor=%3Cscript%3Ealert(2)%3C/script%3E"):
        r = client.get(url)
        assert r.status_code in (200, 400, 404)
        assert "<script>alert" not in r.text and "<img src=x>" not in r.text
    assert client.get("/datasets/nope").status_code == 404


def test_token_gate_refuses_and_logs(demo: tuple[Workspace, Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    ws = demo[0]
    assert access.token_digest(ws) is None
    with pytest.raises(ValidationError, match="onshore dashboard token"):
        access.required_digest(ws, "0.0.0.0")
    assert main(["-w", str(ws.root), "dashboard", "--host", "0.0.0.0", "--port", "1"]) == 1  # refused, not served
    token = access.issue_token(ws)
    assert access.required_digest(ws, "127.0.0.1") is None
    digest = access.required_digest(ws, "0.0.0.0")
    app = create_app(ws.root, digest)
    with TestClient(app) as c, caplog.at_level(logging.WARNING, "onshore.dashboard"):
        assert c.get("/").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        r = c.get(f"/ledger?token={token}")
        assert r.status_code == 200 and access.COOKIE in r.headers["set-cookie"]
        assert c.get("/datasets/arms").status_code == 200  # the cookie now carries it
    assert [r.getMessage() for r in caplog.records if "refused GET /" in r.getMessage()][:2] and \
        any("wrong token" in r.getMessage() for r in caplog.records)
    app.state.workspace.close()
    assert main(["-w", str(ws.root), "dashboard", "token"]) == 0
    assert not access.token_matches(access.token_digest(ws) or "", token)  # issuing again revokes


# -- real browser -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo: tuple[Workspace, Path, Path]) -> Iterator[str]:
    port = _free_port()
    app = create_app(demo[0].root)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    app.state.workspace.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver (make test does, as root)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1280,900",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(a)
    # the driver path is given, so Selenium Manager never looks for (or downloads) a driver
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shot(driver: object, name: str) -> None:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")  # type: ignore[attr-defined]
    driver.set_window_size(1280, min(max(height, 600), 2400))  # type: ignore[attr-defined]
    driver.save_screenshot(str(DOCS_IMG / name))  # type: ignore[attr-defined]
    driver.set_window_size(1280, 900)  # type: ignore[attr-defined]


def test_browser_overview_shows_sites_by_jurisdiction_and_the_us_refusal(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server + "/")  # type: ignore[attr-defined]
    us = d.find_element(By.ID, "jurisdiction-US")  # type: ignore[attr-defined]
    assert "United States" in us.text and "ohio" in us.text
    jp = d.find_element(By.ID, "jurisdiction-JP").text  # type: ignore[attr-defined]
    assert "sakai" in jp and "tokyo" in jp and "pool" in jp
    refusal = d.find_element(By.ID, "refusals").text  # type: ignore[attr-defined]
    assert "ohio (US)" in refusal and "copy" in refusal and "jurisdictions" in refusal
    # the hostile operator name is shown as typed, and no script from it ran or was inserted
    assert HOSTILE.split(" ")[0] in d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
    assert d.execute_script("return document.scripts.length") == 0  # type: ignore[attr-defined]
    _shot(d, "dashboard-overview.png")


def test_browser_dataset_page_shows_shards_at_their_sites(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(server + "/")  # type: ignore[attr-defined]
    d.find_element(By.LINK_TEXT, "arms").click()  # type: ignore[attr-defined]
    assert WebDriverWait(d, 60, 0.2).until(lambda drv: drv.find_element(By.ID, "name")).text == "arms"
    rows = d.find_elements(By.CSS_SELECTOR, "#shards tbody tr")  # type: ignore[attr-defined]
    sites = {r.find_element(By.CSS_SELECTOR, "td.site").text for r in rows}
    assert sites == {"sakai", "tokyo"}
    deny = d.find_element(By.CSS_SELECTOR, "#decisions tr.deny").text  # type: ignore[attr-defined]
    assert "ohio (US)" in deny and "deny" in deny and "jurisdictions" in deny
    assert "pool" in d.find_element(By.ID, "derived").text  # type: ignore[attr-defined]
    _shot(d, "dashboard-dataset.png")


def test_browser_model_lineage_graph_names_the_training_site(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server + "/models/pool")  # type: ignore[attr-defined]
    assert d.find_element(By.ID, "training-site").text == "sakai"  # type: ignore[attr-defined]
    labels = [t.text for t in d.find_elements(By.CSS_SELECTOR, "svg#lineage text.label")]  # type: ignore[attr-defined]
    assert {"arms", "plant", "arm-maker", "chem", "sakai", "pool"} <= set(labels)
    assert len(d.find_elements(By.CSS_SELECTOR, "svg#lineage path.edge")) >= 5  # type: ignore[attr-defined]


def test_browser_ledger_page_verifies_in_the_background(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(server + "/ledger")  # type: ignore[attr-defined]
    # no JavaScript: the page refreshes itself while the check runs
    WebDriverWait(d, 60, 0.5).until(
        lambda drv: "verified" in drv.find_element(By.ID, "verification").text)
    assert "w1" in d.find_element(By.ID, "witnesses").text  # type: ignore[attr-defined]
    box = d.find_element(By.NAME, "kind")  # type: ignore[attr-defined]
    box.send_keys("decision")
    d.find_element(By.CSS_SELECTOR, "form.filters button").click()  # type: ignore[attr-defined]
    WebDriverWait(d, 60, 0.2).until(lambda drv: "kind=decision" in drv.current_url)
    kinds = {r.find_elements(By.TAG_NAME, "td")[2].text
             for r in d.find_elements(By.CSS_SELECTOR, "#entries tbody tr")}  # type: ignore[attr-defined]
    assert kinds == {"decision"}


def test_browser_verify_page_turns_a_tampered_bundle_red(server: str, browser: object,
                                                         demo: tuple[Workspace, Path, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    _, bundle, trust = demo
    for path, ok in ((bundle, True), (tampered(bundle, tmp_path / "tampered.json"), False)):
        d.get(server + "/verify")  # type: ignore[attr-defined]
        d.find_element(By.ID, "bundle").send_keys(str(path))  # type: ignore[attr-defined]
        d.find_element(By.ID, "trust_root").send_keys(str(trust))  # type: ignore[attr-defined]
        d.find_element(By.ID, "verify-button").click()  # type: ignore[attr-defined]
        # the click starts a form submission; wait for the answer page rather than race it
        result = WebDriverWait(d, 60, 0.2).until(lambda drv: drv.find_element(By.ID, "result"))
        colour = result.value_of_css_property("background-color")
        if ok:
            assert result.text.startswith("Verified") and "26, 127, 55" in colour
        else:
            assert result.text.startswith("NOT verified") and "207, 34, 46" in colour
            assert d.find_elements(By.CSS_SELECTOR, "#checks tr.check-fail")  # type: ignore[attr-defined]
