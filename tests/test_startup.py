"""Commands start light.

A fresh interpreter running a listing command never imports torch, NumPy, Arrow, matplotlib or
the simulators (their import alone took longer than the command; the timings live in
bench/startup_bench.py), and still prints the right answer. The command table that lets
``onshore --help`` list commands without importing them (onshore.cli.lazy) matches the commands.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from _serving import MODEL, furnace_workspace
from onshore.cli.app import COMMANDS, command, main, root
from onshore.workspace import Workspace, datasets, models, registry

HEAVY = ("torch", "numpy", "pyarrow", "matplotlib", "metaworld", "mujoco", "tep_studio", "asyncua")
PROBE = f"""
import json, sys
from onshore.cli.app import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = furnace_workspace(tmp_path_factory.mktemp("startup"))  # a dataset and a trained model to list
    ws.close()
    return ws.root


def probe(ws_root: Path, command: list[str]) -> tuple[dict[str, object], str]:
    """``onshore -w WS COMMAND`` in a fresh interpreter: (exit code and heavy modules imported, stdout)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, "-w", str(ws_root), *command], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    *out, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join(out)


def library_answer(ws_root: Path, what: str) -> object:
    """What the library says, in this process, for the listing command ``what`` (its --json form)."""
    with Workspace.open(ws_root) as ws:
        if what == "site":
            return [{**asdict(s), "roles": list(s.roles)} for s in registry.list_sites(ws)]
        if what == "dataset":
            return datasets.list_datasets(ws)
        if what == "model":
            return models.list_models(ws)
        return [{"index": e.index, **e.entry.to_json()} for e in ws.ledger.entries(0, None, None)]


@pytest.mark.parametrize("command", [["site", "list"], ["dataset", "list"], ["model", "list"], ["ledger", "log"]])
def test_listing_commands_answer_right_without_heavy_imports(ws_root: Path, command: list[str]) -> None:
    report, out = probe(ws_root, [*command, "--json"])
    assert report == {"code": 0, "heavy": []}, (command, report)
    listed = json.loads(out)
    assert listed == json.loads(json.dumps(library_answer(ws_root, command[0]), default=str))
    names = {"site": {"sakai", "tokyo"}, "dataset": {"furnace"}, "model": {MODEL}}.get(command[0])
    if names:  # the fixture's workspace really has something to list
        assert names <= {r["name"] if "name" in r else r["model_name"] for r in listed}, listed
    else:
        assert {"data.ingest", "model.release"} <= {e["kind"] for e in listed}
    report, out = probe(ws_root, command)  # the table people read takes the same path
    assert report == {"code": 0, "heavy": []} and out.splitlines()[0].split("\t")[0] in ("name", "#"), out


@pytest.mark.parametrize("command", [["member", "list"], ["dataset", "show", "furnace"], ["model", "show", MODEL],
                                     ["--help"]])
def test_other_light_commands_import_nothing_heavy(ws_root: Path, command: list[str]) -> None:
    report, _ = probe(ws_root, command)
    assert report == {"code": 0, "heavy": []}, (command, report)


def test_help_imports_no_command_module() -> None:
    code = ("import sys; from onshore.cli.app import main; main(['--help']); "
            "print([m for m in sys.modules if m.startswith('onshore.cli.') and m not in "
            "('onshore.cli.app', 'onshore.cli.context', 'onshore.cli.helptext', 'onshore.cli.language', "
            "'onshore.cli.lazy', 'onshore.cli.output')])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_table_matches_the_commands() -> None:
    loaded = command()  # every module imported, every command built
    assert list(loaded.list_commands(None)) == ["init", *COMMANDS]
    for name, row in COMMANDS.items():
        real = loaded.commands[name]
        assert inspect.cleandoc(real.help or "").split("\n\n")[0] == row.summary, name
        assert real.name == name


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_help_listed_from_the_table_is_the_help_of_the_loaded_commands(
        lang: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["--lang", lang, "--help"]) == 0
    lazy = capsys.readouterr().out
    group = root()
    group.load_all()  # the same help, printed from the real commands
    monkeypatch.setattr("onshore.cli.app.root", lambda: group)
    assert main(["--lang", lang, "--help"]) == 0
    assert capsys.readouterr().out == lazy
    assert ("データセット" in lazy) == (lang == "ja") and "dataset" in lazy


def test_a_mistyped_command_is_answered_with_the_names_it_resembles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datset", "list"]) == 2
    assert "Did you mean 'dataset'" in capsys.readouterr().err
