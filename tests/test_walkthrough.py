"""The README's walkthrough, typed through: every command of its ``sh`` block, verbatim, in bash.

The block is cut into commands (continuation lines and here-documents kept whole) and run in one
bash process, in order, from the repository root with a fresh ``$HOME`` (the walkthrough copies
``examples/`` there and works in ``~/onshore-try``), so variables such as ``$T`` and ``$N`` are
filled from earlier output as a person's shell would fill them. Each command must exit 0, or the
code its comment announces (``# exit 3: ...``). A command that ends with ``&`` (the policy server,
the simulated plant, the dashboard) runs in the background; the test then waits until its
``--port`` accepts connections, as a person waits for its "serving ..." line, and stops whatever
is left by PID at the end. The only change to the text: the fixed ports 7070, 4840 and 7080 are
replaced by free ones, so that the test never collides with anything else on the machine.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from onshore.workspace import Workspace, datasets, models, versions

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PORTS = ("7070", "4840", "7080")
#: A ceiling, not the goal: the walkthrough took 117 s on two shared cores when this test was written.
TIMEOUT_S = 420


@dataclass(frozen=True)
class Command:
    text: str      # as in the README: continuation lines and a here-document included
    expect: int    # the exit code its comment announces, else 0
    background: bool


def walkthrough_block(readme: str) -> str:
    """The first ``sh`` block after the "## Walkthrough" heading."""
    section = readme[readme.index("## Walkthrough"):]
    m = re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    assert m, "README: no ```sh block under ## Walkthrough"
    return m.group(1)


def _code_part(line: str) -> str:
    """A line without its trailing comment: a ``#`` at the start or after a blank, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(block: str) -> list[Command]:
    """The block cut into commands; comment-only and blank lines dropped."""
    out: list[Command] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        parts = [line]
        while _code_part(parts[-1]).rstrip().endswith("\\"):
            i += 1
            parts.append(lines[i])
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", _code_part(parts[0]))
        if heredoc:
            word = heredoc.group(1)
            while lines[i].strip() != word:
                i += 1
                parts.append(lines[i])
        i += 1
        text = "\n".join(parts)
        m = re.search(r"#\s*exit (\d)", text)
        background = _code_part(parts[-1]).rstrip().endswith("&") and not heredoc
        out.append(Command(text, int(m.group(1)) if m else 0, background))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(cmds: list[Command], pids: Path) -> str:
    """One bash script that runs ``cmds`` in order and stops at the first unexpected exit code."""
    out = [
        "wait_port() {  # until 127.0.0.1:$1 accepts a connection (a person waits for the 'serving' line)",
        "  for _ in $(seq 1 1200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done",
        "  echo \"port $1 never opened\" >&2; return 1",
        "}",
    ]
    for n, c in enumerate(cmds, 1):
        head = c.text.splitlines()[0][:100].replace("'", "")
        out.append(f"echo '=== step {n} t='$(date +%s.%N)' expect {c.expect}: {head}' >&2")
        out.append(c.text)
        if c.background:
            out.append(f'echo $! >> "{pids}"')
            port = re.search(r"--port (\d+)", c.text)
            if port:
                out.append(f"wait_port {port.group(1)} || exit 91")
        else:
            out.append(f"__rc=$?; [ $__rc -eq {c.expect} ] || "
                       f"{{ echo \"=== step {n} exited $__rc, expected {c.expect}\" >&2; exit 90; }}")
    out.append("echo '=== done t='$(date +%s.%N) >&2")
    return "\n".join(out) + "\n"


def test_walkthrough_is_parsed_into_the_commands_a_person_types() -> None:
    cmds = commands(walkthrough_block(README.read_text()))
    texts = [c.text for c in cmds]
    assert texts[0].startswith("mkdir -p ~/onshore-try") and texts[-1] == "onshore doctor --repair"
    policy = next(c for c in cmds if c.text.startswith("cat > policy.toml"))
    assert policy.text.endswith("POLICY") and 'derived_models = "stop-serving"' in policy.text
    assert [c.expect for c in cmds if c.text.startswith("onshore dataset copy arms")] == [0, 3]
    assert {c.text.split()[1] for c in cmds if c.background} == {"serve", "sim", "dashboard"}
    ingest = [c for c in cmds if c.text.startswith("onshore dataset ingest")]
    assert [c.text.split()[3] for c in ingest] == ["arms", "plant", "my-cell"] and "\\\n" in ingest[0].text
    # everything the walkthrough reads that it does not write itself is shipped in examples/
    for name in ("requests.jsonl", "run-policy.toml", "line3.toml"):
        assert (ROOT / "examples" / name).is_file() and any(name in t for t in texts)


def test_readme_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    block = walkthrough_block(README.read_text())
    for port in PORTS:
        assert port in block
        block = block.replace(port, str(_free_port()))
    cmds = commands(block)
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "onshore"  # the installed command, whichever Python runs this test
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m onshore \"$@\"\n")
    shim.chmod(0o755)
    pids = tmp_path / "pids"
    pids.touch()
    run_sh = tmp_path / "walkthrough.sh"
    run_sh.write_text(script(cmds, pids))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONSHORE_")}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])))
    log = tmp_path / "walkthrough.log"
    started = time.monotonic()
    try:
        with log.open("w") as f:
            proc = subprocess.run(["bash", str(run_sh)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=TIMEOUT_S, check=False)
    finally:
        for pid in {int(p) for p in pids.read_text().split()}:  # what the walkthrough left running
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
    took = time.monotonic() - started
    text = log.read_text()
    assert proc.returncode == 0, text[-6000:]
    print(f"walkthrough: {len(cmds)} commands in {took:.0f} s")

    # what it left is what the README says it leaves
    with Workspace.open(home / "onshore-try" / "consortium") as ws:
        names = {d["name"] for d in datasets.list_datasets(ws)}
        assert {"arms", "plant", "my-cell"} <= names and len(names) == 4  # and the served run, recorded
        assert models.status(ws, "arms-base").status == "blocked"
        assert {m["name"] for m in models.list_models(ws)} == {"arms-base", "arms-base@2", "plant-base",
                                                               "my-cell-model"}
        # the alias the server was started with, and the archived second version
        assert versions.resolve(ws, "arms-base@production") == versions.resolve(ws, "arms-base") == "arms-base"
        starts = [e.entry.body for e in ws.ledger.entries(kinds=("model.serve",)) if e.entry.body["event"] == "start"]
        assert [(b["model"], b["ref"]) for b in starts] == [("arms-base", "arms-base@production")]
        assert models.show_model(ws, "arms-base@2")["archived"] is True
    assert "blocked" in text.split("curl -s")[-1]
    assert re.search(r"\d+ control periods at [\d.]+ Hz: [1-9]\d* commands written", text), "the bridge drove nothing"


def test_sim_plant_on_a_port_in_use_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.cli.app import main

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["sim", "plant", "--env", "metaworld", "--task", "reach-v3", "--port", str(port),
                     "--security", "none"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


if __name__ == "__main__":  # print the commands as the test cuts them
    for c in commands(walkthrough_block(README.read_text())):
        print(f"--- expect {c.expect}{' (background)' if c.background else ''}\n{c.text}")
