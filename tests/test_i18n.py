"""Japanese as well as English: the catalogue is current and compiled, the real CLI and the dashboard
speak the reader's language, and what scripts read (JSON, rule ids, names) never changes with it."""

from __future__ import annotations

import io
import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from starlette.testclient import TestClient

from conftest import EMBODIMENT_TOML, POLICY_JP, make_frames, write_frames
from conftest import run_cli as run
from onshore import i18n
from onshore.cli.helptext import breakable
from onshore.cli.language import take_language
from onshore.errors import NotFoundError, UsageError
from onshore.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "onshore"
JA_PO = PACKAGE / "locale" / "ja" / "LC_MESSAGES" / "onshore.po"
JA_MO = JA_PO.with_suffix(".mo")
RULE = "dataset/furnace/jurisdictions"


def _catalog():  # type: ignore[no-untyped-def]
    with JA_PO.open("rb") as f:
        return read_po(f)


# -- the catalogue --------------------------------------------------------------------------------

def test_committed_mo_is_what_the_po_compiles_to() -> None:
    buf = io.BytesIO()
    write_mo(buf, _catalog())
    assert JA_MO.read_bytes() == buf.getvalue(), "the .mo is stale: run 'make messages' and commit both"


def _extracted() -> set[str]:
    """Every text the source marks for translation, as ``make messages`` extracts it (babel.cfg)."""
    with (ROOT / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    return {msg if isinstance(msg, str) else msg[0]
            for _, _, msg, _, _ in extract_from_dir(str(PACKAGE), method_map, options_map)}


def test_every_msgid_in_the_po_still_occurs_in_the_source() -> None:
    extracted = _extracted()
    # the extraction finds the kinds of text the catalogue is for
    assert {"error:", "Overview", "Datasets: ingest, copy, read, export, list, show, withdraw."} <= extracted
    stale = sorted(m.id for m in _catalog() if m.id and m.id not in extracted)
    assert not stale, f"msgids no longer in the source (run 'make messages'): {stale}"


def test_every_text_marked_in_the_source_is_in_the_catalogue() -> None:
    known = {m.id for m in _catalog() if m.id}
    missing = sorted(_extracted() - known)
    assert not missing, f"marked for translation but not in the catalogue (run 'make messages'): {missing}"


def test_every_message_in_the_source_gives_exactly_its_placeholders() -> None:
    """A template whose fields and values differ would fail while printing the error it carries."""
    import ast

    checked, wrong = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Message" and node.args):
                continue
            template = node.args[0]
            if isinstance(template, ast.Call) and getattr(template.func, "id", None) == "N_":
                template = template.args[0]
            built = len(node.args) > 1 and not isinstance(node.args[1], ast.Dict)
            if not isinstance(template, ast.Constant) or built:
                continue  # a template or values made at run time: nothing to compare here
            values = node.args[1] if len(node.args) > 1 else ast.Dict(keys=[], values=[])
            assert isinstance(values, ast.Dict)
            keys = {k.value for k in values.keys if isinstance(k, ast.Constant)}
            fields = {name for _, name, _, _ in string.Formatter().parse(template.value) if name}
            checked += 1
            if keys != fields:
                wrong.append((str(path.relative_to(PACKAGE)), node.lineno, sorted(keys ^ fields)))
    assert checked > 80 and not wrong, wrong


def _fields(text: str) -> set[str]:
    named = set(re.findall(r"%\((\w+)\)s", text))
    braces = {f"{{{name}!{conv}}}" if conv else f"{{{name}}}"
              for _, name, _, conv in string.Formatter().parse(text) if name is not None}
    return named | braces


def test_every_japanese_entry_is_translated_and_keeps_its_placeholders() -> None:
    entries = [m for m in _catalog() if m.id]
    assert len(entries) > 40
    for m in entries:
        assert m.string and not m.fuzzy, f"untranslated: {m.id!r}"
        assert _fields(m.string) == _fields(m.id), m.id
        # what stays as it is in every language: product names and the commands people type
        for term in ("Cedar", "OPC UA", "PKCS#11", *re.findall(r"'onshore [^']*'", m.id)):
            if term in m.id:
                assert term in m.string, (term, m.id)


# -- choosing the language -----------------------------------------------------------------------

@pytest.mark.parametrize(("env", "lang"), [
    ({"LANG": "ja_JP.UTF-8"}, "ja"),
    ({"LANG": "C.UTF-8"}, "en"),
    ({}, "en"),
    ({"LANG": "fr_FR.UTF-8"}, "en"),
    ({"LANG": "ja_JP.UTF-8", "LC_ALL": "C"}, "en"),           # LC_ALL overrides LANG
    ({"LANG": "C", "LC_MESSAGES": "ja_JP.eucJP"}, "ja"),
    ({"LANGUAGE": "fr:ja:en", "LANG": "C"}, "ja"),            # the first supported of the list
])
def test_language_from_the_environment(env: dict[str, str], lang: str) -> None:
    assert i18n.language_from_env(env) == lang


@pytest.mark.parametrize(("header", "lang"), [
    ("ja", "ja"), ("ja-JP,ja;q=0.9,en-US;q=0.8", "ja"), ("en-US,en;q=0.9,ja;q=0.8", "en"),
    ("fr, ja;q=0.5", "ja"), ("ja;q=0", "en"), ("*", "en"), ("", "en"), (None, "en"),
    ("ja;q=banana, en", "en"), ("de", "en"),
])
def test_language_from_accept_language(header: str | None, lang: str) -> None:
    assert i18n.language_from_accept(header) == lang


def test_lang_option_is_taken_anywhere_before_the_double_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert take_language(["dataset", "list", "--lang", "ja"]) == ("ja", ["dataset", "list"])
    assert take_language(["--lang=ja-JP", "site", "list"]) == ("ja", ["site", "list"])
    assert take_language(["x", "--", "--lang", "ja"]) == ("en", ["x", "--", "--lang", "ja"])
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    assert take_language(["--lang", "en", "site", "list"])[0] == "en"
    assert take_language(["site", "list"])[0] == "ja"
    for bad in (["--lang"], ["--lang", "fr"], ["--lang="]):
        with pytest.raises(UsageError):
            take_language(bad)


def test_a_message_renders_its_fields_untouched_and_survives_a_broken_translation() -> None:
    msg = i18n.Message("no {kind} named {name!r}; see 'onshore {kind} list'", {"kind": "dataset", "name": "炉"})
    ja = i18n.render(msg, i18n.translator("ja"))
    assert ja.startswith("dataset '炉' は見つかりません") and "'onshore dataset list'" in ja
    assert str(NotFoundError(msg)) == str(msg) == "no dataset named '炉'; see 'onshore dataset list'"

    class Broken(i18n.gettext.NullTranslations):
        def gettext(self, message: str) -> str:
            return "{missing}"

    assert i18n.render(msg, Broken()) == str(msg)  # an error message always prints


def test_breakable_keeps_every_line_within_the_width() -> None:
    from rich.cells import cell_len

    text = ("許可されたデータでサイト上のモデルを学習します（拒否された場合は、"
            "読み出しの前にルールを示して終了コード 3 で終わります）。")
    lines = breakable(text, width=50).split("\n")
    assert lines == ["許可されたデータでサイト上のモデルを学習します", "（拒否された場合は、",  # before a bracket
                     "読み出しの前にルールを示して終了コード 3", "で終わります）。"]             # after punctuation
    assert all(cell_len(line) <= 50 for line in lines)
    # a run with nothing to break at stays whole rather than being cut
    assert breakable("あ" * 40, width=50) == "あ" * 40


# -- the real command line -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def refused_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where copying 'furnace' to the US site is refused by the dataset's policy."""
    from onshore.cli.app import main

    tmp = tmp_path_factory.mktemp("i18n")
    w = tmp / "ws"
    assert main(["init", str(w), "--name", "i18n-test"]) == 0
    for args in (["site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage,compute"],
                 ["site", "add", "ohio", "--jurisdiction", "US", "--roles", "storage"],
                 ["member", "add", "steelco"]):
        assert main(["-w", str(w), *args]) == 0
    (tmp / "emb.toml").write_text(EMBODIMENT_TOML)
    (tmp / "policy.toml").write_text(POLICY_JP)
    assert main(["-w", str(w), "embodiment", "add", str(tmp / "emb.toml")]) == 0
    f = write_frames(tmp / "f.parquet")
    assert main(["-w", str(w), "dataset", "ingest", "furnace", str(f), "--member", "steelco", "--site", "sakai",
                 "--policy", str(tmp / "policy.toml"), "--embodiment", "furnace-line-3"]) == 0
    assert main(["-w", str(w), "--lang", "en", "dataset", "copy", "furnace", "--to", "ohio"]) == 3
    return w


def _onshore(*args: str, lang: str = "C.UTF-8") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = lang
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "onshore", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_refusal_in_japanese_names_the_same_rule(refused_ws: Path) -> None:
    w = str(refused_ws)
    en = _onshore("-w", w, "dataset", "copy", "furnace", "--to", "ohio")
    ja_env = _onshore("-w", w, "dataset", "copy", "furnace", "--to", "ohio", lang="ja_JP.UTF-8")
    ja_opt = _onshore("-w", w, "dataset", "copy", "furnace", "--to", "ohio", "--lang", "ja")
    assert en.returncode == ja_env.returncode == ja_opt.returncode == 3
    assert en.stderr.startswith("error: refused: copy of dataset 'furnace' by site:ohio at site ohio (US)")
    for p in (ja_env, ja_opt):
        line = p.stderr.strip()
        assert line.startswith("エラー: ポリシーにより拒否: site:ohio による dataset 'furnace' の copy"
                               "（サイト ohio、US）")
        assert f"判定したルール: {RULE}" in line and "Traceback" not in p.stderr
    # each refusal was recorded (its own ledger entry), in the same language-neutral form
    indices = [int(re.search(r"(?:ledger entry|ledger エントリ) (\d+)", p.stderr).group(1))  # type: ignore[union-attr]
               for p in (en, ja_env, ja_opt)]
    assert indices == sorted(indices) and len(set(indices)) == 3
    # an explicit --lang en wins over a Japanese locale
    back = _onshore("-w", w, "dataset", "copy", "furnace", "--to", "ohio", "--lang", "en", lang="ja_JP.UTF-8")
    assert back.stderr.startswith("error: refused: copy") and RULE in back.stderr


def test_json_output_is_the_same_in_every_language(refused_ws: Path) -> None:
    w = str(refused_ws)
    args = ("-w", w, "policy", "check", "--action", "copy", "--dataset", "furnace", "--site", "ohio", "--json")
    en, ja = _onshore(*args), _onshore(*args, lang="ja_JP.UTF-8")
    assert en.returncode == ja.returncode == 3
    a, b = json.loads(en.stdout), json.loads(ja.stdout)
    assert a["rules"] == b["rules"] == [RULE] and a["decision"] == b["decision"] == "deny"
    assert {k for k in a} == {k for k in b}
    # the same, field by field, but for what a second decision changes (its time and ledger place)
    assert b["ledger_index"] > a["ledger_index"]
    a.pop("ledger_index"), b.pop("ledger_index")
    assert a == b
    listing = ("-w", w, "site", "list", "--json")
    assert _onshore(*listing).stdout == _onshore(*listing, "--lang", "ja").stdout


def test_errors_and_help_summaries_in_japanese(refused_ws: Path, tmp_path: Path) -> None:
    missing = _onshore("-w", str(refused_ws), "dataset", "show", "nope", "--lang", "ja")
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("エラー: dataset 'nope' は見つかりません。"
                                      "'onshore dataset list' で一覧を確認してください")
    top = _onshore("--help", "--lang", "ja")
    assert top.returncode == 0
    assert "データセット: 取り込み、コピー、読み出し、" in top.stdout and "--lang" in top.stdout
    group = _onshore("dataset", "--help", lang="ja_JP.UTF-8")
    assert "データセット: 取り込み、コピー" in group.stdout and "ingest" in group.stdout  # command names stay
    assert "Datasets: ingest, copy" in _onshore("dataset", "--help").stdout
    bad = _onshore("--lang", "fr", "site", "list")
    assert bad.returncode == 2 and "en, ja" in bad.stderr


def test_common_errors_are_japanese_with_lang_ja_and_exactly_english_by_default(
        refused_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    w = str(refused_ws)
    missing = tmp_path / "missing.toml"
    cases = [  # (arguments, the English line, the Japanese line)
        (["-w", str(tmp_path), "site", "list"],
         f"{tmp_path} is not an Onshore workspace (no onshore.toml); run 'onshore init' there, or point "
         "-w/--workspace or ONSHORE_WORKSPACE at one",
         f"{tmp_path} は Onshore のワークスペースではありません（onshore.toml がありません）。そこで 'onshore init' "
         "を実行するか、-w/--workspace または ONSHORE_WORKSPACE でワークスペースを指定してください"),
        (["-w", w, "site", "add", "Sakai_2", "--jurisdiction", "JP", "--roles", "storage"],
         "invalid site name 'Sakai_2': use 1 to 64 lowercase letters, digits and '-', starting with a letter or "
         "digit (no slashes, dots, spaces or control characters)",
         "site の名前 'Sakai_2' は使えません。英小文字・数字・'-' で 1〜64 文字とし、英小文字か数字で始めてください"
         "（スラッシュ、ドット、空白、制御文字は使えません）"),
        (["-w", w, "site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage"],
         "site 'sakai' already exists; see 'onshore site list'",
         "site 'sakai' はすでにあります。'onshore site list' で確認してください"),
        (["-w", w, "site", "add", "nara", "--jurisdiction", "jp", "--roles", "storage"],
         "--jurisdiction: 'jp' is not an ISO 3166-1 alpha-2 country code such as 'JP' or 'US' (did you mean 'JP'?)",
         "--jurisdiction: 'jp' は ISO 3166-1 alpha-2 の国コード（'JP'、'US' など）ではありません"
         "（'JP' の誤りではありませんか）"),
        (["-w", w, "site", "add", "nara", "--jurisdiction", "JP", "--roles", "storage,flying"],
         "--roles 'storage,flying': use a comma-separated subset of storage, compute, serve",
         "--roles 'storage,flying': storage, compute, serve の中からカンマ区切りで指定してください"),
        (["-w", w, "embodiment", "add", str(missing)],
         f"{missing}: no such embodiment file", f"{missing}: embodiment ファイルがありません"),
        (["-w", w, "policy", "check", "--action", "copy", "--dataset", "furnace", "--site", "nowhere"],
         "unknown site 'nowhere'; see 'onshore site list'",
         "サイト 'nowhere' は登録されていません。'onshore site list' で確認してください"),
        (["-w", w, "model", "show", "nope"],
         "no model named 'nope'; see 'onshore model list'",
         "model 'nope' は見つかりません。'onshore model list' で一覧を確認してください"),
        (["-w", w, "dataset", "copy", "furnace", "--to", "sakai"],
         "dataset 'furnace' is already at site 'sakai'", "dataset 'furnace' はすでにサイト 'sakai' にあります"),
        (["-w", w, "dataset", "read", "furnace", "--site", "sakai", "--purpose", "fine-tuning",
          "--out", str(tmp_path / "no-folder" / "f.parquet")],
         f"--out {tmp_path / 'no-folder' / 'f.parquet'}: folder {tmp_path / 'no-folder'} does not exist; "
         "create it first",
         f"--out {tmp_path / 'no-folder' / 'f.parquet'}: フォルダ {tmp_path / 'no-folder'} がありません。"
         "先に作成してください"),
    ]
    from onshore.workspace import Workspace

    with Workspace.open(refused_ws) as ws:
        before = ws.ledger.size()
    for args, en, ja in cases:
        code, _, err = run(capsys, *args)
        assert code == 1 and err == f"error: {en}\n", args
        code, _, err = run(capsys, *args, "--lang", "ja")
        assert code == 1 and err == f"エラー: {ja}\n", args
    with Workspace.open(refused_ws) as ws:
        assert ws.ledger.size() == before  # refused before anything was decided or recorded
    # the same through the environment, in a process of its own
    p = _onshore("-w", w, "embodiment", "add", str(missing), lang="ja_JP.UTF-8")
    assert p.returncode == 1 and p.stderr == f"エラー: {missing}: embodiment ファイルがありません\n"


def test_a_telemetry_refusal_names_the_same_frame_and_channel_in_japanese(
        refused_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import pyarrow as pa

    table = make_frames()
    state = np.array(table.column("observation.state").to_pylist(), dtype=np.float32)
    state[5, 2] = 30.0  # o2_percent, whose limits are 0..25
    table = table.set_column(table.column_names.index("observation.state"), "observation.state",
                             pa.FixedSizeListArray.from_arrays(state.ravel(), 3).cast(pa.list_(pa.float32())))
    bad = write_frames(tmp_path / "bad.parquet", table)
    (tmp_path / "policy.toml").write_text(POLICY_JP)
    args = ("-w", str(refused_ws), "dataset", "ingest", "o2-spike", str(bad), "--member", "steelco", "--site",
            "sakai", "--policy", str(tmp_path / "policy.toml"), "--embodiment", "furnace-line-3")
    code, _, err = run(capsys, *args)
    assert code == 1 and err == (
        f"error: {bad}: episode 0, frame 5: 'observation.state' channel 'o2_percent' is 30 percent, outside its "
        "limits 0..25 percent (1 value(s) outside in this batch); repair the data or the embodiment's limits, or "
        "ingest with --allow-out-of-limits to keep it (the count is recorded in the ledger)\n")
    code, _, err = run(capsys, *args, "--lang", "ja")
    assert code == 1 and err == (
        f"エラー: {bad}: エピソード 0、フレーム 5: 'observation.state' のチャネル 'o2_percent' が 30 percent で、"
        "制限範囲 0..25 percent の外です（このバッチで範囲外の値は 1 個）。"
        "データかエンボディメントの制限値を修正するか、そのまま残す場合は --allow-out-of-limits を付けて"
        "取り込んでください（範囲外の件数は台帳に記録されます）\n")
    assert run(capsys, "-w", str(refused_ws), "dataset", "show", "o2-spike")[0] == 1  # nothing was ingested


def test_onshore_upgrade_needed_is_said_in_japanese(refused_ws: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import shutil
    import sqlite3

    from onshore.catalog.migrate import CATALOG

    old = tmp_path / "old"
    shutil.copytree(refused_ws, old)
    with sqlite3.connect(old / "catalog.db") as db:  # as a workspace made by the previous version
        db.execute(f"UPDATE {CATALOG.version_table} SET version_num = ?", (CATALOG.revisions[-2],))
    where, was, head = f"sqlite:///{old / 'catalog.db'}", CATALOG.revisions[-2], CATALOG.head
    code, _, err = run(capsys, "-w", str(old), "site", "list")
    assert code == 1 and err == (f"error: the catalog ({where}) is at schema revision {was!r}; this version of "
                                 f"Onshore needs {head!r}: run 'onshore upgrade' (it takes a backup first), then "
                                 "run this command again\n")
    code, _, err = run(capsys, "-w", str(old), "site", "list", "--lang", "ja")
    assert code == 1 and err == (f"エラー: カタログ（{where}）のスキーマリビジョンは {was!r} ですが、このバージョンの "
                                 f"Onshore には {head!r} が必要です。'onshore upgrade' を実行し（先にバックアップを"
                                 "取ります）、その後このコマンドをもう一度実行してください\n")


def test_in_process_cli_switches_language_per_call(refused_ws: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    w = str(refused_ws)
    code, _, err = run(capsys, "-w", w, "dataset", "copy", "furnace", "--to", "ohio", "--lang", "ja")
    assert code == 3 and err.startswith("エラー:") and RULE in err
    code, _, err = run(capsys, "-w", w, "dataset", "copy", "furnace", "--to", "ohio")
    assert code == 3 and err.startswith("error: refused:") and RULE in err
    code, out, _ = run(capsys, "--help")
    assert "Datasets: ingest" in out and "データセット" not in out


# -- the dashboard -------------------------------------------------------------------------------

def test_dashboard_overview_follows_accept_language(refused_ws: Path) -> None:
    app = create_app(refused_ws)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            ja = c.get("/", headers={"Accept-Language": "ja-JP,ja;q=0.9,en;q=0.8"})
            en = c.get("/", headers={"Accept-Language": "en-US,en;q=0.9"})
            plain = c.get("/")
            assert ja.status_code == en.status_code == 200 and ja.headers["vary"] == "Accept-Language"
            assert '<html lang="ja">' in ja.text and "<h1>データの所在</h1>" in ja.text
            assert "データセット 1 件" in ja.text and "過去 24 時間の拒否" in ja.text
            assert ">概要</a>" in ja.text and "Where the data sits" not in ja.text
            assert '<html lang="en">' in en.text and "<h1>Where the data sits</h1>" in en.text
            assert plain.text == en.text
            # names, rule ids and Cedar are shown as they are in both
            for page in (ja.text, en.text):
                assert f'<td class="rule">{RULE}</td>' in page and 'data-site="sakai"' in page
                assert '<a href="/datasets/furnace">furnace</a>' in page and "Cedar, SHA-256" in page
            # the JSON API is the same whatever the language
            j_ja = c.get("/?format=json", headers={"Accept-Language": "ja"}).json()
            j_en = c.get("/?format=json").json()
            for j in (j_ja, j_en):
                j.pop("generated_at", None)
            assert j_ja.keys() == j_en.keys() and j_ja["jurisdictions"] == j_en["jurisdictions"]
            # an error page in Japanese, its JSON in English
            nf = c.get("/datasets/nope", headers={"Accept-Language": "ja"})
            assert nf.status_code == 404 and "dataset &#39;nope&#39; は見つかりません" in nf.text
            nf_json = c.get("/datasets/nope?format=json", headers={"Accept-Language": "ja"})
            assert nf_json.status_code == 404 and nf_json.json()["error"].startswith("no dataset named 'nope'")
    finally:
        app.state.workspace.close()
