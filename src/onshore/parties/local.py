"""A whole consortium on one machine: provision it on free loopback ports and start each party as
its own process in its own folder, stopped by PID. What ``onshore demo --parties``, the tests and
the bench run; a real deployment starts each party on its own machine (docs/deployment.md)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from onshore.errors import OnshoreError
from onshore.parties.consortium import parse_consortium
from onshore.parties.kit import Kit, load_kit
from onshore.parties.provision import provision

#: the demo's consortium: two JP sites and one US site, two members, a witness, an auditor
SITES = (("sakai", "JP", ["storage", "compute"]), ("tokyo", "JP", ["storage", "compute", "serve"]),
         ("ohio", "US", ["storage", "compute"]))
MEMBERS = ("kansai-robotics", "kansai-chemicals")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def consortium_text(name: str = "kansai") -> str:
    """A consortium file for ``SITES`` and ``MEMBERS`` on free loopback ports."""
    d = {"name": name, "coordinator": {"host": "127.0.0.1", "port": free_port()},
         "sites": [{"name": n, "jurisdiction": j, "roles": r, "host": "127.0.0.1", "port": free_port()}
                   for n, j, r in SITES],
         "members": [{"name": m} for m in MEMBERS],
         "witnesses": [{"name": "witness-kyoto", "host": "127.0.0.1", "port": free_port()}],
         "auditors": [{"name": "auditor"}]}
    return tomli_w.dumps(d)


@dataclass
class LocalConsortium:
    """Kits under ``root``; ``start`` runs coordinator and sites as processes (PIDs in ``procs``)."""

    root: Path
    kits: dict[str, Kit] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def provision(cls, root: Path, text: str | None = None) -> LocalConsortium:
        root = Path(root).resolve()  # each party runs in its own folder: relative paths would break
        root.mkdir(parents=True, exist_ok=True)
        (root / "consortium.toml").write_text(text or consortium_text())
        folders = provision(parse_consortium((root / "consortium.toml").read_text(), "consortium.toml"),
                            root / "kits")
        return cls(root, {label: load_kit(f) for label, f in folders.items()})

    def kit(self, label: str) -> Kit:
        return self.kits[label]

    def start(self, label: str, db_url: str | None = None, env: dict[str, str] | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """Start the coordinator (``coordinator:coordinator``), a site (``site:NAME``) or a witness
        (``witness:NAME``) as a process, with ``env`` added to its environment (tests: crash points)
        and ``extra`` arguments after its serve command's own (``--metrics-port N``)."""
        kit = self.kits[label]
        if kit.kind == "witness":
            host, port = self.endpoint(label)
            args = ["witness", "serve", "--folder", str(kit.folder / "keys"), "--host", host, "--port", str(port),
                    "--tls-cert", str(kit.cert), "--tls-key", str(kit.key), "--client-ca", str(kit.ca)]
        elif kit.kind == "coordinator":
            args = ["coordinator", "serve", str(kit.folder)]
        else:
            args = ["site", "serve", str(kit.folder)]
        if db_url:
            args += ["--db", db_url]
        args += list(extra)
        log = open(self.root / f"{label.replace(':', '-')}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "onshore", *args], stdout=log, stderr=log, env=env,
                                cwd=kit.folder)
        self.procs[label] = proc
        self.wait_port(label)
        return proc

    def endpoint(self, label: str) -> tuple[str, int]:
        kit = self.kits[label]
        url = (kit.coordinator_url if kit.kind == "coordinator" else kit.witnesses[kit.name]["url"]
               if kit.kind == "witness" else kit.sites[kit.name].flight)
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        return host, int(port)

    def wait_port(self, label: str, timeout_s: float = 60.0) -> None:
        host, port = self.endpoint(label)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[label]
            if proc.poll() is not None:
                log = (self.root / f"{label.replace(':', '-')}.log").read_text(errors="replace")[-2000:]
                raise OnshoreError(f"{label} exited with {proc.returncode} while starting:\n{log}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise OnshoreError(f"{label} did not listen on {host}:{port} within {timeout_s:.0f} s")

    def start_all(self, db_url: str | None = None) -> None:
        self.start("coordinator:coordinator", db_url)
        for label in self.kits:
            if label.startswith(("site:", "witness:")):
                self.start(label)

    def kill(self, label: str, sig: int = signal.SIGTERM) -> None:
        """Stop one party by its PID (SIGKILL for a crash)."""
        proc = self.procs.pop(label, None)
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for label in list(self.procs):
            self.kill(label)
