"""The light install next to the machine (issue 21, section 2): ``onshore-client``, built from
``client/pyproject.toml`` out of this repository's own source files, holds the policy-server client,
the safety envelope and the OPC UA bridge and nothing that needs torch.

Two kinds of check. Static (no network): the module list is closed under imports, every outside
package those modules import is a dependency of the distribution, and each of its dependencies is
the main package's with the same version range. Live: the wheel is built, installed into a fresh
virtualenv with its dependencies from PyPI (pip's cache may serve them), and there, with nothing of
this tree on the path, it connects to a real ``onshore serve`` started from the main environment,
gets the same action an in-process client gets, passes it through the envelope, and has imported
neither torch nor any other heavy package. Without PyPI (and no cache holding the packages) the
live tests fail, saying so; they never skip.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from _serving import EMBODIMENT, TASK, furnace_workspace, serve
from onshore.serve import Client, tokens

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "client"
SRC = REPO / "src"
HEAVY_MODULES = ("torch", "matplotlib", "metaworld", "mujoco", "tep_studio", "pyarrow", "sqlalchemy", "safetensors")
HEAVY_DISTS = ("torch", "matplotlib", "metaworld", "mujoco", "tep-studio", "pyarrow", "sqlalchemy", "safetensors")
STATE = [600.0, 640.0, 4.0]


def _client_project() -> dict:
    with (CLIENT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _module_file(name: str) -> Path | None:
    """The source file of ``onshore...`` module or package ``name`` in this tree, if there is one."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from a import b`` gives
    ``a.b`` when that is a module of this tree, else ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module != "__future__":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if node.module.startswith("onshore") and _module_file(sub) else node.module)
    return found


def _packaged() -> set[str]:
    """The modules the wheel holds: the listed ones and the ``__init__`` of every package above them."""
    listed = set(_client_project()["tool"]["setuptools"]["py-modules"])
    parents = {".".join(m.split(".")[:i]) for m in listed for i in range(1, m.count(".") + 1)}
    return listed | parents


def test_the_module_list_is_closed_under_imports_and_its_outside_packages_are_dependencies() -> None:
    packaged = _packaged()
    for must in ("onshore.serve.client", "onshore.serve.envelope", "onshore.serve.bridge"):
        assert must in packaged
    dists = importlib.metadata.packages_distributions()
    declared = {canonicalize_name(Requirement(r).name) for r in _client_project()["project"]["dependencies"]}
    missing, undeclared = [], []
    for module in sorted(packaged):
        path = _module_file(module)
        assert path is not None, f"client/pyproject.toml lists {module}, which is not in src/"
        for imported in sorted(_imports(path)):
            top = imported.split(".")[0]
            if top == "onshore":
                if imported not in packaged:
                    missing.append(f"{imported} (imported by {path.relative_to(REPO)})")
            elif top not in sys.stdlib_module_names:
                owners = {canonicalize_name(d) for d in dists.get(top, [top])}
                if not owners & declared:
                    undeclared.append(f"{top} (imported by {path.relative_to(REPO)})")
    assert not missing, f"add to py-modules in client/pyproject.toml: {missing}"
    assert not undeclared, f"add to dependencies in client/pyproject.toml: {undeclared}"


def test_the_client_dependencies_are_the_main_packages_with_the_same_ranges() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        main = {canonicalize_name(r.name): r for r in map(Requirement, tomllib.load(f)["project"]["dependencies"])}
    for spec in _client_project()["project"]["dependencies"]:
        req = Requirement(spec)
        ours = main.get(canonicalize_name(req.name))
        assert ours is not None, f"{req.name} is a client dependency but not one of the main package"
        assert ours.specifier == req.specifier, f"{req.name}: client asks {req.specifier}, main {ours.specifier}"


# nothing of this tree (PYTHONPATH: src/, where a build may have left onshore_client.egg-info) may reach the
# fresh virtualenv or the pip that fills it
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run(cmd: list[str], what: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", env=CLEAN_ENV)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the built onshore-client wheel and its dependencies."""
    root = tmp_path_factory.mktemp("client-dist")
    # built from a copy of the two folders the build reads, so that setuptools' scratch files
    # (client/build, src/onshore_client.egg-info) never land in this tree
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(CLIENT, root / "client", ignore=skip)
    shutil.copytree(SRC / "onshore", root / "src" / "onshore", ignore=skip)
    _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
          "-w", str(root / "dist"), str(root / "client")], "building the onshore-client wheel")
    (wheel,) = (root / "dist").glob("onshore_client-*.whl")
    # no pip inside it (ensurepip is slow): this environment's pip installs into it (--python)
    _run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], "creating a virtualenv")
    python = root / "venv" / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--disable-pip-version-check", "--no-input", "--no-compile", "--timeout", "30", str(wheel)],
                          capture_output=True, text=True, timeout=600, cwd="/", env=CLEAN_ENV)
    if proc.returncode != 0:
        pytest.fail("could not install the onshore-client wheel with its dependencies (numpy, msgpack, websockets, "
                    "asyncua, ...) from PyPI; this test needs PyPI, or a pip cache that holds them:\n"
                    + proc.stderr[-3000:], pytrace=False)
    return python


def test_the_fresh_environment_holds_the_client_and_no_heavy_package(client_python: Path) -> None:
    proc = _run([str(client_python), "-I", "-c", "import importlib.metadata as m, json; "
                 "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"],
                "listing the virtualenv")
    names = {canonicalize_name(n) for n in json.loads(proc.stdout)}
    assert "onshore-client" in names and "onshore" not in names
    assert {"numpy", "msgpack", "websockets", "asyncua"} <= names
    assert not names & set(HEAVY_DISTS), sorted(names & set(HEAVY_DISTS))


MAP = f"""embodiment = "{EMBODIMENT}"
task = "{TASK}"
[nodes]
state = ["ns=2;s=state/0", "ns=2;s=state/1", "ns=2;s=state/2"]
action = ["ns=2;s=action/0", "ns=2;s=action/1"]
"""

PROBE = """
import json, sys
import asyncua  # what the bridge opens the PLC with: a dependency, importable here
import numpy as np
import onshore
from onshore.serve import Client
from onshore.serve import bridge, envelope
from onshore.telemetry.embodiment import Embodiment

url, token, embodiment, task, state = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
with Client(url, token, embodiment) as client:
    ready = client.reset(task)
    action = client.act(np.array(state, dtype=np.float32))
mapping = bridge.BridgeMap.from_toml(sys.argv[6])
emb = Embodiment.from_dict(ready["spec"], source="the server")
limits = envelope.Limits.from_embodiment(emb)
command = envelope.Envelope(limits, initial=action).command(action)
print(json.dumps({"action": action.tolist(), "enveloped": command.action.tolist(), "low": limits.low.tolist(),
                  "high": limits.high.tolist(), "onshore": onshore.__file__,
                  "map": [mapping.embodiment, len(mapping.action)], "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def test_the_installed_client_acts_against_a_real_server_without_importing_torch(
        client_python: Path, tmp_path: Path) -> None:
    ws = furnace_workspace(tmp_path)
    try:
        token = tokens.issue(ws, "tokyo", "line-3-plc")
        server = serve(ws)
    finally:
        ws.close()
    try:
        probe = f"HEAVY = {HEAVY_MODULES!r}\n{PROBE}"
        bridge_map = tmp_path / "line3.toml"
        bridge_map.write_text(MAP)
        # -I: nothing from this tree (PYTHONPATH, the current folder) on the path, only the virtualenv
        proc = _run([str(client_python), "-I", "-c", probe, server.url, token, EMBODIMENT, TASK, json.dumps(STATE),
                     str(bridge_map)], "acting from the fresh virtualenv", timeout=120)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        with Client(server.url, token, EMBODIMENT) as here:  # the same request from this environment
            here.reset(TASK)
            expected = here.act(np.array(STATE, dtype=np.float32))
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.finish()
    assert Path(got["onshore"]).is_relative_to(client_python.parent.parent), got["onshore"]
    assert got["heavy"] == [], got["heavy"]
    assert got["map"] == [EMBODIMENT, 2]
    action = np.array(got["action"])
    assert action.shape == expected.shape and np.isfinite(action).all()
    np.testing.assert_allclose(action, expected, rtol=1e-6, atol=1e-6)
    assert (np.array(got["low"]) <= np.array(got["enveloped"])).all()
    assert (np.array(got["enveloped"]) <= np.array(got["high"])).all()
