"""The residency dashboard: routes and JSON with Starlette's TestClient, access by token, escaping,
and real browser tests (Debian's headless Chromium driven by Selenium) over a demo-like workspace."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import delete, insert
from starlette.testclient import TestClient

from _dashboard import HOSTILE, build, tampered
from onshore.attest.trust import TrustRoot
from onshore.attest.verify import verify_bundle
from onshore.catalog import schema as T
from onshore.cli.app import main
from onshore.encoding import b64encode
from onshore.errors import ValidationError
from onshore.web import access
from onshore.web import app as app_module
from onshore.web.app import create_app
from onshore.workspace import Workspace, datasets, doctor, models

DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
LOCAL = "http://127.0.0.1"  # the Host a browser on the machine sends; others are refused


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
    with TestClient(app, base_url=LOCAL) as c:
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
    with TestClient(app, base_url=LOCAL) as c:
        assert c.post("/ledger/verify", headers={"Accept": "application/json"}).status_code == 200
        app.state.verifier.wait(60)
        v = c.get("/ledger/verify").json()
        assert v["state"] == "ok" and v["done"] == v["total"] == demo[0].ledger.size() == v["size"]
        cli = demo[0].verify_ledger()
        assert v["ok"] and v["root"] == b64encode(cli.root) and v["signatures_checked"] == cli.signatures_checked
    app.state.workspace.close()


def test_verify_page_runs_the_offline_checks(client: TestClient, demo: tuple[Workspace, Path, Path],
                                             tmp_path: Path) -> None:
    _, bundle, trust = demo
    files = {"bundle": ("b.json", bundle.read_bytes()), "trust_root": ("t.json", trust.read_bytes())}
    good = client.post("/verify?format=json", files=files, data={"min_witnesses": "1"}).json()
    cli = verify_bundle(bundle.read_bytes(), TrustRoot.load(trust), 1).to_json()
    assert {k: good[k] for k in cli} == cli and good["ok"]  # what `onshore verify --json` prints
    assert good["current_status"] == {"kind": "dataset", "name": "arms", "known": True, "status": "active",
                                      "reasons": []}
    bad = tampered(bundle, tmp_path / "bad.json")
    files["bundle"] = ("b.json", bad.read_bytes())
    out = client.post("/verify?format=json", files=files).json()
    assert not out["ok"] and "envelope" in " ".join(out["failed"])
    assert client.post("/verify", files={"bundle": ("b", b"{}")}).status_code == 400


def test_dataset_bundle_button_records_one_attestation(client: TestClient, demo: tuple[Workspace, Path, Path]) -> None:
    ws = demo[0]
    before = ws.ledger.size()
    assert client.get("/datasets/arms/bundle").status_code == 405  # a GET (a link, a prefetch) never writes
    assert ws.ledger.size() == before
    assert 'method="post" action="/datasets/arms/bundle"' in client.get("/datasets/arms").text
    r = client.post("/datasets/arms/bundle")
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
    with TestClient(app, base_url=LOCAL) as c, caplog.at_level(logging.WARNING, "onshore.dashboard"):
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


def test_a_token_digest_written_into_the_catalog_opens_nothing(demo: tuple[Workspace, Path, Path]) -> None:
    ws = demo[0]
    issued = access.issue_token(ws)
    entry = list(ws.ledger.entries(kinds=(access.KIND,)))[-1].entry
    assert entry.actor == "log" and entry.body == {"token_sha256": hashlib.sha256(issued.encode()).hexdigest()}
    # an insider writes the digest of a token of their own into the catalog, as it used to be kept
    forged = "insider-" + "x" * 40
    with ws.catalog.begin() as conn:
        conn.execute(delete(T.settings).where(T.settings.c.key == doctor.DASHBOARD_SETTING))
        conn.execute(insert(T.settings).values(key=doctor.DASHBOARD_SETTING,
                                               value=hashlib.sha256(forged.encode()).hexdigest()))
    app = create_app(ws.root, access.required_digest(ws, "0.0.0.0"), host="0.0.0.0")
    with TestClient(app, base_url="http://192.0.2.10") as c:
        assert c.get("/", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        assert c.get("/", headers={"Authorization": f"Bearer {issued}"}).status_code == 200
    app.state.workspace.close()
    assert any(f.subject == "dashboard token" for f in doctor.check_signed_rules(ws))
    with ws.catalog.begin() as conn:
        conn.execute(delete(T.settings).where(T.settings.c.key == doctor.DASHBOARD_SETTING))


def test_every_response_carries_nosniff_and_a_content_security_policy(client: TestClient) -> None:
    for r in (client.get("/"), client.get("/datasets/nope"), client.get("/ledger?before=x"),
              client.get("/static/style.css"), client.get("/datasets/arms/bundle"),
              client.get("/", headers={"Host": "evil.example"})):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp


def test_foreign_host_and_cross_origin_post_are_refused(client: TestClient, demo: tuple[Workspace, Path, Path],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    ws = demo[0]
    for host in ("127.0.0.1:7080", "localhost:7080", "[::1]:7080", "127.0.0.1"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    before = ws.ledger.size()
    with caplog.at_level(logging.WARNING, "onshore.dashboard"):
        # DNS rebinding: a name the attacker controls, resolved to 127.0.0.1
        r = client.get("/datasets/arms?format=json", headers={"Host": "attacker.example:7080"})
        assert r.status_code == 400 and "arms" not in r.text
        assert client.post("/datasets/arms/bundle", headers={"Host": "attacker.example"}).status_code == 400
        r = client.post("/datasets/arms/bundle", headers={"Origin": "http://attacker.example"})
        assert r.status_code == 403
    assert ws.ledger.size() == before  # nothing written by a refused request
    assert any("attacker.example" in r.getMessage() for r in caplog.records)
    assert client.post("/datasets/arms/bundle", headers={"Origin": LOCAL}).status_code == 200  # our own form
    assert client.post("/datasets/arms/bundle", headers={"Origin": "http://127.0.0.1:9"}).status_code == 403
    # a wildcard bind is protected by its token, not by names
    assert app_module.allowed_hosts("0.0.0.0") is None and "10.0.0.5" in app_module.allowed_hosts("10.0.0.5")


def test_malformed_query_values_answer_400_not_500(client: TestClient) -> None:
    for url in ("/ledger?before=" + "9" * 27, f"/ledger?before={2**63}", "/ledger?per_page=-1",
                "/ledger?before=%EF%BC%91", "/ledger?before=1e3", "/ledger?per_page=" + "1" * 400):
        r = client.get(url)
        assert r.status_code == 400, (url, r.status_code)
        assert "whole number" in r.text
    assert client.get(f"/ledger?before={2**63 - 1}&format=json").status_code == 200
    for url in ("/ledger?actor=%00", "/ledger?kind=%ff%fe", "/ledger?since=%00&until=%00", "/datasets/%00",
                "/ledger?dataset=" + "a" * 5000):
        assert client.get(url).status_code in (200, 400, 404), url


def test_deeply_nested_trust_root_is_refused_cleanly(client: TestClient, demo: tuple[Workspace, Path, Path],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, bundle, _ = demo
    nested = ("[" * 200_000 + "]" * 200_000).encode()
    deep_object = ('{"a":' * 200_000 + "1" + "}" * 200_000).encode()
    for blob in (nested, deep_object):
        r = client.post("/verify", files={"bundle": ("b.json", bundle.read_bytes()), "trust_root": ("t.json", blob)})
        assert r.status_code == 400 and "nested too deeply" in r.text
        r = client.post("/verify?format=json", files={"bundle": ("b.json", blob),
                                                      "trust_root": ("t.json", demo[2].read_bytes())})
        assert r.status_code == 200 and not r.json()["ok"]  # a bundle that is not one fails its format check
    trust = tmp_path / "deep-trust.json"
    trust.write_bytes(nested)
    assert main(["verify", str(bundle), "--trust-root", str(trust)]) == 1
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err


def test_ledger_log_lists_decisions_about_models(demo: tuple[Workspace, Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ws = demo[0]
    _, index = models.decide(ws, "pool", "serve", "ohio", "fine-tuning")  # refused: a US site
    assert main(["-w", str(ws.root), "ledger", "log", "--from", str(index)]) == 0
    out = capsys.readouterr().out
    assert "deny serve model pool @ohio" in " ".join(out.split())
    assert main(["-w", str(ws.root), "ledger", "log", "--kind", "decision", "--json"]) == 0
    assert any(e["body"]["request"].get("model") == "pool" for e in json.loads(capsys.readouterr().out))


def test_a_missing_required_option_exits_2(demo: tuple[Workspace, Path, Path], capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    w = str(demo[0].root)
    before = demo[0].ledger.size()
    for args in (["policy", "check", "--action", "serve", "--model", "pool"],  # --site
                 ["policy", "check", "--action", "read"],  # --dataset or --model
                 ["eval", "--env", "metaworld", "--tasks", "reach-v3", "--policy", "pool"],  # --site
                 ["train", "--site", "sakai", "--purpose", "fine-tuning"],  # --datasets or --all-granted
                 ["serve", "pool", "--site", "tokyo", "--record-member", "arm-maker"],  # --record-policy
                 ["witness", "add", "w9"],  # --vkey or --dir
                 ["site", "add", "x"]):  # --jurisdiction, click's own check
        assert main(["-w", w, *args]) == 2, args
        err = capsys.readouterr().err
        assert ("Usage: onshore" in err or "--help" in err) and "Traceback" not in err, args
    assert demo[0].ledger.size() == before  # nothing decided, nothing recorded


# -- the reader's language ---------------------------------------------------------------------

JA = {"Accept-Language": "ja-JP,ja;q=0.9,en;q=0.5"}


def _texts(html: str, tag: str) -> list[str]:
    """The text of each ``tag`` element (tags inside stripped, whitespace collapsed)."""
    found = re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", html, re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", m).split()) for m in found]


def _people_text(html: str) -> list[str]:
    """What a person reads as words on a page: headings, buttons, labels and the column headings."""
    heads = [th for block in re.findall(r"<thead>(.*?)</thead>", html, re.S) for th in _texts(block, "th")]
    return [*_texts(html, "h1"), *_texts(html, "h2"), *_texts(html, "h3"), *_texts(html, "button"),
            *_texts(html, "label"), *heads]


def test_every_page_follows_accept_language_and_its_json_does_not(client: TestClient,
                                                                   demo: tuple[Workspace, Path, Path]) -> None:
    _, bundle, trust = demo
    files = {"bundle": ("b.json", bundle.read_bytes()), "trust_root": ("t.json", trust.read_bytes())}
    pages = {  # path: (the Japanese h1, the English h1)
        "/datasets/arms": ("データセット arms 有効", "Dataset arms active"),
        "/models/pool": ("モデル pool 正常", "Model pool ok"),
        "/ledger": ("台帳", "Ledger"),
        "/verify": ("データ所在バンドルの検証", "Verify a residency bundle"),
    }
    for path, (h1_ja, h1_en) in pages.items():
        ja, en = client.get(path, headers=JA), client.get(path)
        assert ja.status_code == en.status_code == 200, path
        assert '<html lang="ja">' in ja.text and _texts(ja.text, "h1") == [h1_ja], path
        assert _texts(en.text, "h1") == [h1_en], path
        # every heading, button, label and column heading is in Japanese; '#' and 'sha256' are no words
        for text in _people_text(ja.text):
            assert text in ("#", "sha256") or re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text), (path, text)
        for text in _people_text(en.text):
            assert not re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text), (path, text)
        # the JSON is the same whatever the language (the ledger's ages and background check aside)
        if path != "/verify":
            j_ja, j_en = client.get(path + "?format=json", headers=JA).json(), client.get(path + "?format=json").json()
            keys = ("log", "size", "root", "origin") if path == "/ledger" else tuple(j_en)
            assert j_ja.keys() == j_en.keys() and {k: j_ja[k] for k in keys} == {k: j_en[k] for k in keys}, path

    ds = client.get("/datasets/arms", headers=JA).text
    assert "<h2>各シャードの所在</h2>" in ds and "<h2>利用ポリシー</h2>" in ds
    assert ">データ所在バンドルを作成</button>" in ds
    assert '<span class="status status-active">有効</span>' in ds  # the class keeps the word
    assert "<td>このデータで学習</td>" in ds and "<td>trained on it</td>" in client.get("/datasets/arms").text
    # rule ids, entry fields, names and Cedar are shown as they are in both languages
    en_ds = client.get("/datasets/arms").text
    for page in (ds, en_ds):
        assert '<td class="rule">dataset/arms/jurisdictions</td>' in page and "<td>ohio (US)</td>" in page
        assert "permit (" in page and 'href="/ledger?site=tokyo"' in page
    model = client.get("/models/pool", headers=JA).text
    assert '<text class="col" x="' in model and ">学習サイト</text>" in model and ">メンバー</text>" in model
    assert "<h2>実効ポリシー</h2>" in model and "<h2>系譜</h2>" in model
    ledger = client.get("/ledger", headers=JA).text
    assert "<h2>ウィットネス</h2>" in ledger and re.search(r"\(\d+ (秒|分|時間|日)前\)", ledger)
    assert re.search(r"\(\d+ (s|min|h|d) ago\)", client.get("/ledger").text)
    assert 'name="kind"' in ledger and ">絞り込み</button>" in ledger  # the query's fields stay as they are

    # a verified bundle: the verdict, the status now and each check's result in Japanese
    result = client.post("/verify", files=files, headers=JA, data={"min_witnesses": "1"})
    assert result.status_code == 200
    assert _texts(result.text, "h2")[0] == "検証済み: データセット arms、site:sakai が証明"
    assert '<span class="status status-active" id="current-status">有効</span>' in result.text
    assert "<strong>合格</strong>" in result.text and "<strong>pass</strong>" not in result.text
    assert "<strong>pass</strong>" in client.post("/verify", files=files).text

    # errors: the page in Japanese, the JSON in English
    nf = client.get("/models/nope", headers=JA)
    assert nf.status_code == 404 and _texts(nf.text, "h1") == ["表示できません"]
    assert "model &#39;nope&#39; は見つかりません" in nf.text and "概要に戻る" in nf.text
    bad = client.get("/ledger?before=x", headers=JA)
    assert bad.status_code == 400 and f"before=&#39;x&#39;: 0 から {app_module.MAX_INT} までの整数" in bad.text
    bad_json = client.get("/ledger?before=x&format=json", headers=JA)
    assert bad_json.json()["error"] == f"before='x': give a whole number from 0 to {app_module.MAX_INT}"
    missing = client.post("/verify", files={"bundle": ("b", b"{}")}, headers=JA)
    assert missing.status_code == 400 and "フォーム項目 &#39;trust_root&#39;: ファイルを選んでください" in missing.text


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


def test_browser_overview_in_japanese_by_accept_language(server: str, tmp_path: Path) -> None:
    """A browser whose preferred language is Japanese gets the overview in Japanese; names and rule ids as they are."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
              "--lang=ja", f"--user-data-dir={tmp_path / 'chromium-ja'}"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "ja,en"})  # sent as Accept-Language
    d = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver") or "chromedriver"),
                         options=opts)
    try:
        d.set_page_load_timeout(60)
        d.get(server + "/")
        assert d.find_element(By.TAG_NAME, "h1").text == "データの所在"
        assert d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ja"
        assert "概要" in d.find_element(By.TAG_NAME, "nav").text
        refusal = d.find_element(By.ID, "refusals").text
        assert "ohio (US)" in refusal and "copy" in refusal and "jurisdictions" in refusal
        assert "United States" in d.find_element(By.ID, "jurisdiction-US").text
    finally:
        d.quit()


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


# -- a running dashboard process sees what other processes did (these run last: they withdraw) ---

def _fetch(url: str, token: str | None = None, as_json: bool = True) -> tuple[int, str]:
    headers = {"Accept": "application/json" if as_json else "text/html"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def dashboard_process(demo: tuple[Workspace, Path, Path], tmp_path: Path) -> Iterator[str]:
    """``onshore dashboard`` over the demo workspace, a process of its own on a free loopback port."""
    port = _free_port()
    log_file = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "onshore", "-w", str(demo[0].root), "dashboard", "--port",
                             str(port)], stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "the dashboard did not start"
            try:
                if _fetch(base + "/ledger/verify")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)
        log_file.close()


def test_running_dashboard_shows_stops_taints_and_withdrawals_of_other_processes(
        dashboard_process: str, demo: tuple[Workspace, Path, Path]) -> None:
    from onshore.serve import service

    ws, bundle, trust = demo
    base = dashboard_process

    def page(path: str) -> dict:  # type: ignore[type-arg]
        code, body = _fetch(base + path)
        assert code == 200, (path, body)
        return json.loads(body)

    assert page("/models/pool")["serving"] == []
    models.copy_model(ws, "pool", "tokyo")
    with service.start(ws, "pool", "tokyo", port=0) as run:  # this process serves; the dashboard's sees it
        m = page("/models/pool")
        assert [(r["site"], r["port"], r["stop_index"]) for r in m["serving"]] == [("tokyo", run.port, None)]
    m = page("/models/pool")
    assert m["serving"] == [] and m["serve_runs"][0]["stop_index"] == run.report.stop_index  # type: ignore[union-attr]
    html = _fetch(base + "/models/pool", as_json=False)[1]
    assert "Not served now" in html and "no stop recorded yet" not in html

    sakai_before = next(s for j in page("/")["jurisdictions"] for s in j["sites"] if s["name"] == "sakai")
    t0 = time.monotonic()
    datasets.withdraw(ws, "plant", "chem")  # its clause is keep: the derived model is tainted
    m = page("/models/pool")
    seen_after = time.monotonic() - t0
    assert m["status"]["label"] == "tainted" and [t["dataset"] for t in m["taints"]] == ["plant"]
    o = page("/")
    sakai = next(s for j in o["jurisdictions"] for s in j["sites"] if s["name"] == "sakai")
    assert sakai["withdrawn_names"] == ["plant"] and "plant" not in sakai["dataset_names"]
    assert sakai["datasets"] == sakai_before["datasets"] - 1 and sakai["bytes"] < sakai_before["bytes"]
    assert o["withdrawn_datasets"] == ["plant"]
    html = _fetch(base + "/", as_json=False)[1]
    assert 'plant</a> <span class="status status-withdrawn">withdrawn</span>' in html

    datasets.withdraw(ws, "arms", "arm-maker")  # stop-serving: the model is blocked
    assert page("/models/pool")["status"]["label"] == "blocked"
    assert page("/datasets/arms")["status"] == "withdrawn"
    # the bundle made before still verifies (it proves the past), beside what is true now
    boundary = "onshore-test-boundary"
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{n}.json"\r\n'
                    f"Content-Type: application/json\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for n, p in (("bundle", bundle), ("trust_root", trust))) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(base + "/verify?format=json", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        v = json.loads(r.read())
    assert v["ok"] and v["current_status"]["status"] == "withdrawn" and v["current_status"]["known"]
    print(f"withdrawal by another process shown on the next page load after {seen_after * 1000:.0f} ms")


def test_reissued_token_replaces_the_old_one_while_the_dashboard_runs(demo: tuple[Workspace, Path, Path]) -> None:
    ws = demo[0]
    old = access.issue_token(ws)
    app = create_app(ws.root, access.token_digest(ws), host="0.0.0.0")
    with TestClient(app, base_url="http://192.0.2.10") as c:
        assert c.get("/", headers={"Authorization": f"Bearer {old}"}).status_code == 200
        assert c.get(f"/?token={old}").status_code == 200  # sets the cookie
        # another process re-issues it, while this dashboard runs
        out = subprocess.run([sys.executable, "-m", "onshore", "-w", str(ws.root), "dashboard", "token"],
                             capture_output=True, text=True, timeout=60, check=True)
        new = out.stdout.strip()
        assert new and new != old
        assert c.get("/", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert c.get("/datasets/arms").status_code == 401  # nor does the cookie the old token set
        assert c.get("/", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    app.state.workspace.close()
