"""What a new user meets first: messages (not tracebacks), help that helps, output fit for a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import EMBODIMENT_TOML, POLICY_JP, write_frames
from conftest import run_cli as run
from onshore.catalog.db import open_engine
from onshore.catalog.schema import metadata
from onshore.cli.app import command
from onshore.errors import OnshoreError
from onshore.workspace import Workspace, datasets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_ws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    w = tmp_path / "ws"
    assert run(capsys, "init", str(w), "--name", "first-impressions")[0] == 0
    long_operator = "Sakai Data Centre, operated under contract for the Kansai consortium " * 2
    for args in (["site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage,compute",
                  "--operator", long_operator.strip()],
                 ["site", "add", "tokyo", "--jurisdiction", "JP", "--roles", "storage,compute"],
                 ["member", "add", "steelco"]):
        assert run(capsys, "-w", str(w), *args)[0] == 0
    (tmp_path / "emb.toml").write_text(EMBODIMENT_TOML)
    (tmp_path / "policy.toml").write_text(POLICY_JP)
    assert run(capsys, "-w", str(w), "embodiment", "add", str(tmp_path / "emb.toml"))[0] == 0
    f = write_frames(tmp_path / "f.parquet")
    assert run(capsys, "-w", str(w), "dataset", "ingest", "furnace", str(f), "--member", "steelco",
               "--site", "sakai", "--policy", str(tmp_path / "policy.toml"), "--embodiment", "furnace-line-3")[0] == 0
    return w


def ledger_size(w: Path) -> int:
    with Workspace.open(w) as ws:
        return ws.ledger.size()


# ----------------------------------------------------------------------------- markup is text

def test_names_and_messages_print_literally_not_as_markup(cli_ws: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-w", str(cli_ws), "dataset", "show", "[/bold]")
    assert code == 1 and "no dataset named '[/bold]'" in err and "Traceback" not in err
    bad = tmp_path / "[red]emb.toml"
    bad.write_text(EMBODIMENT_TOML.replace('name = "zone2_temp"\n', ""))
    code, _, err = run(capsys, "-w", str(cli_ws), "embodiment", "add", str(bad))
    assert code == 1 and "[red]emb.toml" in err and "[[state]] #2" in err


# -------------------------------------------------------------------- the listed tracebacks

def test_infinite_limit_is_a_message(cli_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "inf.toml"
    f.write_text(EMBODIMENT_TOML.replace('name = "furnace-line-3"', 'name = "open-ended"')
                 .replace("low = 0.0", "low = -inf", 1))
    code, _, err = run(capsys, "-w", str(cli_ws), "embodiment", "add", str(f))
    assert code == 1 and "'low' must be a finite number" in err and "zone1_temp" in err


@pytest.mark.parametrize("target", ["nodir/x.parquet", "existing-folder"])
def test_read_out_is_checked_before_the_key_is_released(target: str, cli_ws: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "existing-folder").mkdir()
    before = ledger_size(cli_ws)
    code, _, err = run(capsys, "-w", str(cli_ws), "dataset", "read", "furnace", "--site", "sakai",
                       "--out", str(tmp_path / target))
    assert code == 1 and err.startswith("error: --out") and "Traceback" not in err
    assert ledger_size(cli_ws) == before  # nothing decided, no key released


def test_read_out_existing_file_needs_force(cli_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "back.parquet"
    out.write_bytes(b"precious")
    before = ledger_size(cli_ws)
    code, _, err = run(capsys, "-w", str(cli_ws), "dataset", "read", "furnace", "--site", "sakai", "--out", str(out))
    assert code == 1 and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious" and ledger_size(cli_ws) == before
    code, _, err = run(capsys, "-w", str(cli_ws), "dataset", "read", "furnace", "--site", "sakai", "--out", str(out),
                       "--force")
    assert code == 0 and "wrote 200 frames" in err
    import pyarrow.parquet as pq
    assert pq.read_table(out).num_rows == 200
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".back")] == []  # no temporary left


def test_workspace_option_on_a_file_and_init_on_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = run(capsys, "-w", str(f), "site", "list")
    assert code == 1 and "is a file, not a workspace folder" in err
    code, _, err = run(capsys, "init", str(f), "--name", "x")
    assert code == 1 and "is a file" in err and f.read_text() == "x"


def test_failed_init_leaves_no_folder_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "new-ws"
    code, _, err = run(capsys, "init", str(w), "--name", "x", "--catalog", "nosuchdb://nowhere")
    assert code == 1 and "cannot open database" in err
    assert not w.exists()


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on an install without the extra
    with pytest.raises(OnshoreError, match=r"pip install 'onshore\[postgres\]'"):
        open_engine("postgresql://onshore@localhost/catalog", metadata)


def test_packaging_metadata_uses_spdx_and_has_postgres_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not the deprecated table
    assert any(d.startswith("psycopg") for d in project["optional-dependencies"]["postgres"])


# ------------------------------------------------------------------------------ witnesses

def test_witness_messages_name_the_command_and_the_file(cli_ws: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cp = tmp_path / "cp.txt"
    assert run(capsys, "-w", str(cli_ws), "ledger", "checkpoint", "-o", str(cp))[0] == 0
    code, _, err = run(capsys, "witness", "cosign", str(cp), "--dir", str(tmp_path))
    assert code == 1 and "onshore witness init" in err and "Witness.init" not in err
    bad = tmp_path / "not-cosigned.txt"
    bad.write_text("garbage\n")
    code, _, err = run(capsys, "-w", str(cli_ws), "ledger", "checkpoint", "--add-cosigned", str(bad))
    assert code == 1 and str(bad) in err
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    code, _, err = run(capsys, "-w", str(cli_ws), "ledger", "checkpoint", "--add-cosigned", str(binary))
    assert code == 1 and str(binary) in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- help

def all_commands(cmd, path=()):  # type: ignore[no-untyped-def]
    yield path, cmd
    for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
        yield from all_commands(sub, (*path, name))


def test_every_option_and_argument_is_described() -> None:
    missing = [(" ".join(path), p.name) for path, cmd in all_commands(command()) for p in cmd.params
               if not (getattr(p, "help", None) or "").strip()]
    assert missing == []


def test_help_reads_well_at_80_columns() -> None:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT / "src")}
    for path, _ in all_commands(command()):
        out = subprocess.run([sys.executable, "-m", "onshore", *path, "--help"], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0, (path, out.stderr)
        text = out.stdout
        for placeholder in ("<bool>", "<str>", "<path>", "<int>", "<float>", "list[Path]", "{name}"):
            assert placeholder not in text, (path, placeholder)
        assert max(len(line) for line in text.splitlines()) <= 80, path
    init_help = subprocess.run([sys.executable, "-m", "onshore", "init", "--help"], capture_output=True, text=True,
                               env=env, timeout=60).stdout
    assert "postgresql://" in init_help and "onshore[postgres]" in init_help
    group = subprocess.run([sys.executable, "-m", "onshore", "--help"], capture_output=True, text=True,
                           env=env, timeout=60).stdout
    dataset_line = next(line for line in group.splitlines() if "│ dataset" in line)
    assert "export" in dataset_line and "list" in dataset_line


# ------------------------------------------------------------------- output fit for a pipe

def test_outside_a_terminal_lines_are_whole_and_tables_are_plain(cli_ws: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-w", str(cli_ws), "site", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "name\tjurisdiction\troles\toperator\troot"
    sakai = next(line for line in lines if line.startswith("sakai\t"))
    assert "operated under contract for the Kansai consortium Sakai Data Centre" in sakai  # not wrapped
    code, out, _ = run(capsys, "-w", str(cli_ws), "ledger", "log")
    with Workspace.open(cli_ws) as ws:
        key = ws.ledger.get(0).entry.body["log_public_key"]
    init_line = next(line for line in out.splitlines() if "\tworkspace.init\t" in line)
    assert init_line.rstrip().endswith(key) or key in init_line  # the summary is not cut
    # an ingest or copy run in a pipe draws no progress: not even a blank line
    code, out, err = run(capsys, "-w", str(cli_ws), "dataset", "copy", "furnace", "--to", "tokyo")
    assert code == 0 and err == "" and out.count("\n") == 1


def test_copy_and_read_report_progress(cli_ws: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    with Workspace.open(cli_ws) as ws:
        datasets.copy(ws, "furnace", "tokyo", progress=lambda *a: seen.append(a))
        total = sum(s["bytes"] for s in datasets.show(ws, "furnace")["shards"] if s["site"] == "tokyo")
        assert seen and seen[-1] == ("copy", total, total)
        seen.clear()
        frames = datasets.read_to_file(ws, "furnace", "tokyo", tmp_path / "r.parquet",
                                       progress=lambda *a: seen.append(a))
    assert frames == 200 and seen[-1] == ("decrypt", 200, 200)


# --------------------------------------------------------------------------------- startup

def test_the_command_line_imports_no_heavy_library_until_a_command_needs_it() -> None:
    code = ("import sys, onshore.cli.app; "
            "print([m for m in ('matplotlib', 'torch', 'metaworld', 'pyarrow', 'sqlalchemy', 'cedarpy', 'numpy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert json.loads(out.stdout.replace("'", '"')) == []
