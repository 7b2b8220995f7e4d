"""Shared fixtures: real workspaces on disk, real keys, real SQLite (and PostgreSQL when it can run)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onshore.ledger.witness import Witness
from onshore.workspace import Workspace, registry

EMBODIMENT_TOML = """\
name = "furnace-line-3"
control_hz = 10
[[state]]
name = "zone1_temp"
unit = "degC"
low = 0.0
high = 1400.0
[[state]]
name = "zone2_temp"
unit = "degC"
low = 0.0
high = 1400.0
[[state]]
name = "o2_percent"
unit = "percent"
low = 0.0
high = 25.0
[[action]]
name = "fuel_valve"
unit = "percent"
low = 0.0
high = 100.0
max_rate = 5.0
[[action]]
name = "air_damper"
unit = "percent"
low = 0.0
high = 100.0
max_rate = 10.0
"""

POLICY_JP = """\
jurisdictions = ["JP"]
sites = []
purposes = ["foundation-pretraining", "fine-tuning"]
expires = 2031-03-31
derived_models = "stop-serving"
"""


def make_frames(episodes: int = 4, frames: int = 50, state_dim: int = 3, action_dim: int = 2,
                seed: int = 0, first_episode: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = episodes * frames
    # inside every state channel's limits of EMBODIMENT_TOML (o2_percent is 0..25)
    state = rng.uniform(0, 25, size=(n, state_dim)).astype(np.float32)
    action = rng.uniform(0, 100, size=(n, action_dim)).astype(np.float32)
    return pa.table({
        "episode_index": np.repeat(np.arange(first_episode, first_episode + episodes), frames).astype(np.int64),
        "frame_index": np.tile(np.arange(frames), episodes).astype(np.int64),
        "timestamp": np.tile(np.arange(frames) / 10.0, episodes),
        "observation.state": pa.FixedSizeListArray.from_arrays(state.ravel(), state_dim).cast(
            pa.list_(pa.float32())),
        "action": pa.FixedSizeListArray.from_arrays(action.ravel(), action_dim).cast(pa.list_(pa.float32())),
        "task": pa.array(["keep zone temperatures"] * n),
        "next.reward": np.zeros(n, dtype=np.float32),
        "next.done": np.tile(np.arange(frames) == frames - 1, episodes),
    })


def write_frames(path: Path, table: pa.Table | None = None, **kw: int) -> Path:
    pq.write_table(table if table is not None else make_frames(**kw), path)
    return path


@pytest.fixture(autouse=True)
def _english_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages in English whatever the locale the suite runs under (tests/test_i18n.py asks for Japanese)."""
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


@pytest.fixture
def frames_file(tmp_path: Path) -> Path:
    return write_frames(tmp_path / "frames.parquet")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(POLICY_JP)
    return p


def build_consortium(ws: Workspace, tmp: Path) -> Workspace:
    registry.add_site(ws, "sakai", "JP", "storage,compute", operator="Sakai DC")
    registry.add_site(ws, "tokyo", "JP", "storage,compute,serve")
    registry.add_site(ws, "ohio", "US", "storage,compute")
    registry.add_member(ws, "steelco")
    registry.add_member(ws, "autoco")
    emb = tmp / "furnace.toml"
    emb.write_text(EMBODIMENT_TOML)
    registry.add_embodiment(ws, emb)
    return ws


def cosign_with_witnesses(ws: Workspace, folder: Path, names: tuple[str, ...] = ("w1", "w2")) -> None:
    """Checkpoint the ledger now and have a new witness per name cosign it (each registered in ``ws``)."""
    note = ws.make_checkpoint()
    for name in names:
        w = Witness.init(f"witness.example/{name}", folder / name)
        registry.add_witness(ws, name, w.vkey)
        ws.add_cosignatures(w.cosign(note, ws.log_vkey, []))


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A workspace with no workspace-wide rule: two JP sites, one US site, two members."""
    w = Workspace.init(tmp_path / "ws", "test-consortium")
    build_consortium(w, tmp_path)
    yield w
    w.close()


# ---- PostgreSQL: a throwaway server on loopback, when the binaries are here -----------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server URL: $ONSHORE_TEST_POSTGRES, else a private server started here.

    Skips (with the reason shown in the summary) when neither is possible.
    """
    if os.environ.get("ONSHORE_TEST_POSTGRES"):
        yield os.environ["ONSHORE_TEST_POSTGRES"]
        return
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL not reachable: no $ONSHORE_TEST_POSTGRES and no initdb/pg_ctl on PATH")
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("PostgreSQL not reachable: running as root without runuser")
        run_as = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="onshore-pg-"))
    if run_as:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    try:
        subprocess.run([*run_as, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "onshore"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*run_as, pg_ctl, "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"PostgreSQL not reachable: could not start a local server ({e})")
    try:
        yield f"postgresql://onshore@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> str:
    """A new, empty database on the test server; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


# ---- simulator telemetry for training tests, made once per session --------------------------------

@pytest.fixture(scope="session")
def telemetry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real simulator telemetry, made once: Sawyer arms on two tasks, the TEP plant for 10 minutes."""
    from onshore.sim.generate import generate

    root = tmp_path_factory.mktemp("telemetry")
    generate("metaworld", ["reach-v3", "push-v3"], 3, seed=1, out=root / "arms", workers=2)
    generate("tep", ["base"], 1, seed=2, out=root / "plant", workers=1, seconds=600.0)
    return {"arms": root / "arms", "plant": root / "plant"}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: exit code, standard output, standard error."""
    from onshore.cli.app import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
