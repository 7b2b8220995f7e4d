"""Every command, run with hostile arguments, answers with a message and an exit code, never a traceback.

Hostile: Rich markup in names and paths, folders that do not exist, files where folders are
expected (including -w), and numbers too large for any database column.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import EMBODIMENT_TOML, POLICY_JP, write_frames
from onshore.cli.app import command, main

MARKUP = "[/bold]x[red]"
HUGE = "99999999999999999999999"
# Commands that, given valid arguments, legitimately run simulators for minutes: their folder
# options always get a file (refused at once), their other values stay hostile.
LONG_RUNNING = {("demo",), ("sim", "generate"), ("eval",)}


def leaf_commands(cmd, path=()):  # type: ignore[no-untyped-def]
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in sorted(subs.items()):
            yield from leaf_commands(sub, (*path, name))
    else:
        yield path, cmd


def hostile_args(path: tuple[str, ...], cmd, kind: str, tmp: Path) -> list[str]:  # type: ignore[no-untyped-def]
    a_file = tmp / "a-file.txt"
    values = {
        "markup": {"str": MARKUP, "path": tmp / MARKUP, "int": "1"},
        "missing": {"str": "[/]", "path": tmp / "no-such-folder" / "x.out", "int": "0"},
        "file-for-folder": {"str": "[red]", "path": a_file / "sub", "int": "-1"},
        "huge": {"str": "[/]", "path": a_file, "int": HUGE},
    }[kind]
    args: list[str] = []
    positional: list[str] = []
    for p in cmd.params:
        if p.name == "help" or getattr(p, "is_flag", False):
            continue
        annotation = getattr(getattr(p, "type_descriptor", None), "annotation", str)
        name = getattr(annotation, "__name__", "str")
        if name == "Path" or "Path" in str(annotation):
            v = str(a_file if path in LONG_RUNNING else values["path"])
        elif name in ("int", "float") or "int" in str(annotation):
            v = values["int"]
        else:
            v = values["str"]
        if p.param_type_name == "argument":
            positional.append(v)
        else:
            args += [p.opts[0], v]
    return [*path, *positional, *args]


@pytest.fixture
def hostile_ws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    w = tmp_path / "ws"
    assert main(["init", str(w), "--name", "hostile"]) == 0
    assert main(["-w", str(w), "site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage,compute"]) == 0
    assert main(["-w", str(w), "member", "add", "steelco"]) == 0
    (tmp_path / "emb.toml").write_text(EMBODIMENT_TOML)
    (tmp_path / "policy.toml").write_text(POLICY_JP)
    assert main(["-w", str(w), "embodiment", "add", str(tmp_path / "emb.toml")]) == 0
    f = write_frames(tmp_path / "f.parquet")
    assert main(["-w", str(w), "dataset", "ingest", "furnace", str(f), "--member", "steelco", "--site", "sakai",
                 "--policy", str(tmp_path / "policy.toml"), "--embodiment", "furnace-line-3"]) == 0
    (tmp_path / "a-file.txt").write_text("not a folder, not a workspace, not a checkpoint\n")
    capsys.readouterr()
    return w


@pytest.mark.parametrize("kind", ["markup", "missing", "file-for-folder", "huge"])
def test_every_command_answers_hostile_arguments_without_a_traceback(
        kind: str, hostile_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    workspaces = [str(hostile_ws)] + ([str(tmp_path / "a-file.txt")] if kind == "file-for-folder" else [])
    ran = 0
    for path, cmd in leaf_commands(command()):
        for w in workspaces:
            argv = ["-w", w, *hostile_args(path, cmd, kind, tmp_path)]
            try:
                code = main(argv)
            except BaseException as e:  # noqa: BLE001 - the point: nothing may escape main()
                pytest.fail(f"{argv} raised {type(e).__name__}: {e}")
            out, err = capsys.readouterr()
            assert code in (0, 1, 2, 3), (argv, code, err)
            assert "Traceback" not in err + out and "MarkupError" not in err, (argv, err)
            if code == 1:
                assert err.startswith("error: "), (argv, err)
            ran += 1
    assert ran > 30  # every command of the CLI was tried
