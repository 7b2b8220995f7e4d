"""The CLI as a person and a script use it: exit codes, --json, messages without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EMBODIMENT_TOML, POLICY_JP, write_frames
from conftest import run_cli as run


@pytest.fixture
def cli_ws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    w = tmp_path / "ws"
    assert run(capsys, "init", str(w), "--name", "cli-test")[0] == 0
    for args in (["site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage,compute"],
                 ["site", "add", "ohio", "--jurisdiction", "US", "--roles", "storage"],
                 ["member", "add", "steelco"]):
        assert run(capsys, "-w", str(w), *args)[0] == 0
    (tmp_path / "emb.toml").write_text(EMBODIMENT_TOML)
    (tmp_path / "policy.toml").write_text(POLICY_JP)
    assert run(capsys, "-w", str(w), "embodiment", "add", str(tmp_path / "emb.toml"))[0] == 0
    return w


def test_full_flow_with_exit_codes(cli_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = str(cli_ws)
    f = write_frames(tmp_path / "f.parquet")
    code, out, _ = run(capsys, "-w", w, "dataset", "ingest", "furnace", str(f), "--member", "steelco",
                       "--site", "sakai", "--policy", str(tmp_path / "policy.toml"),
                       "--embodiment", "furnace-line-3", "--json")
    assert code == 0 and json.loads(out)["frames"] == 200
    code, out, err = run(capsys, "-w", w, "dataset", "copy", "furnace", "--to", "ohio")
    assert code == 3 and "dataset/furnace/jurisdictions" in err and "Traceback" not in err
    code, out, _ = run(capsys, "-w", w, "policy", "check", "--action", "read", "--dataset", "furnace",
                       "--site", "sakai", "--json")
    assert code == 0 and json.loads(out)["decision"] == "allow"
    code, out, _ = run(capsys, "-w", w, "policy", "check", "--action", "copy", "--dataset", "furnace",
                       "--site", "ohio", "--json")
    body = json.loads(out)
    assert code == 3 and body["decision"] == "deny" and body["rules"] == ["dataset/furnace/jurisdictions"]
    out_file = tmp_path / "back.parquet"
    assert run(capsys, "-w", w, "dataset", "read", "furnace", "--site", "sakai", "--out", str(out_file))[0] == 0
    assert out_file.exists()
    for listing in (["site", "list"], ["member", "list"], ["embodiment", "list"], ["dataset", "list"],
                    ["dataset", "show", "furnace"], ["ledger", "log"]):
        code, out, _ = run(capsys, "-w", w, *listing, "--json")
        assert code == 0, listing
        json.loads(out)  # JSON only
    code, out, _ = run(capsys, "-w", w, "ledger", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run(capsys, "-w", w, "dataset", "withdraw", "furnace", "--member", "steelco", "--json")
    assert code == 0 and json.loads(out)["shredded_at"] == ["sakai"]
    code, _, err = run(capsys, "-w", w, "dataset", "read", "furnace", "--site", "sakai")
    assert code == 3 and "dataset/furnace/withdrawn" in err


def test_policy_check_many_records_all_in_order(cli_ws: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    w = str(cli_ws)
    f = write_frames(tmp_path / "f.parquet")
    assert run(capsys, "-w", w, "dataset", "ingest", "furnace", str(f), "--member", "steelco", "--site", "sakai",
               "--policy", str(tmp_path / "policy.toml"), "--embodiment", "furnace-line-3")[0] == 0
    reqs = tmp_path / "requests.jsonl"
    reqs.write_text('{"action": "read", "dataset": "furnace", "site": "sakai"}\n\n'
                    '{"action": "copy", "dataset": "furnace", "site": "ohio"}\n')
    code, out, _ = run(capsys, "-w", w, "policy", "check-many", str(reqs), "--json")
    got = json.loads(out)
    assert code == 3 and [d["decision"] for d in got] == ["allow", "deny"]
    assert got[1]["ledger_index"] == got[0]["ledger_index"] + 1 and got[0]["request"]["principal"] == "site:sakai"
    reqs.write_text('{"action": "read", "dataset": "furnace", "site": "sakai"}\n')
    code, out, _ = run(capsys, "-w", w, "policy", "check-many", str(reqs))
    assert code == 0 and "allow read of furnace by site:sakai" in out
    for text, says in (('{"action": "read", "dataset": "furnace"}\n{"action": "read"}\n', "line 2"),
                       ('{"action": "read", "dataset": "nope"}\n', "line 1: no dataset named 'nope'"),
                       ("not json\n", "line 1: not JSON"), ("\n", "holds no requests")):
        reqs.write_text(text)
        code, _, err = run(capsys, "-w", w, "policy", "check-many", str(reqs))
        assert code == 1 and says in err and "Traceback" not in err, (text, err)


def test_user_errors_exit_1_without_traceback(cli_ws: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    w = str(cli_ws)
    for args, needle in [
        (["site", "add", "x", "--jurisdiction", "XX", "--roles", "storage"], "'XX' is not an ISO 3166-1"),
        (["site", "add", "Bad", "--jurisdiction", "JP", "--roles", "storage"], "invalid site name"),
        (["site", "add", "y", "--jurisdiction", "JP", "--roles", "storage,cooking"], "--roles"),
        (["member", "add", "steelco"], "already exists"),
        (["dataset", "show", "nope"], "no dataset named 'nope'"),
        (["embodiment", "add", str(tmp_path / "missing.toml")], "no such embodiment file"),
    ]:
        code, out, err = run(capsys, "-w", w, *args)
        assert code == 1 and needle in err and "Traceback" not in err, (args, err)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "site", "add")[0] == 2
    assert run(capsys, "no-such-command")[0] == 2


def test_not_a_workspace_says_what_to_do(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "-w", str(tmp_path), "site", "list")
    assert code == 1 and "onshore init" in err


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "onshore"
    proc = subprocess.run([str(exe), "-w", str(tmp_path / "w"), "init", "--name", "x", "--jurisdiction", "JP"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(exe), "-w", str(tmp_path / "w"), "ledger", "verify"], capture_output=True, text=True)
    assert proc.returncode == 0 and "ledger verified" in proc.stdout


def test_version_and_workspace_after_the_command(cli_ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from onshore.cli.app import hoist_workspace

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"onshore {version('onshore')}"
    w = str(cli_ws)
    want = run(capsys, "-w", w, "site", "list", "--json")
    assert want[0] == 0 and {s["name"] for s in json.loads(want[1])} == {"sakai", "ohio"}
    for args in (["site", "list", "-w", w, "--json"], ["site", "list", "--json", f"--workspace={w}"],
                 ["site", "list", f"-w{w}", "--json"], ["-w", "/nonexistent", "site", "list", "-w", w, "--json"]):
        assert run(capsys, *args)[:2] == want[:2], args  # the later -w wins, as click's options do
    code, _, err = run(capsys, "site", "list", "-w")
    assert code == 2 and "-w needs a folder" in err and "Traceback" not in err
    # after "--" nothing is an option any more
    assert hoist_workspace(["ledger", "log", "--", "-w", "x"]) == ["ledger", "log", "--", "-w", "x"]
    assert hoist_workspace(["ledger", "log", "--workers", "2"]) == ["ledger", "log", "--workers", "2"]
