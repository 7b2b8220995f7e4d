"""The same seed gives byte-identical files, with one worker or two."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from onshore.cli.sim import app
from onshore.sim.generate import generate
from onshore.sim.sensors import SensorOptions


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_metaworld_same_seed_same_bytes_any_worker_count(tmp_path):
    sensors = SensorOptions(noise=0.001, quantize=True)
    args = ("metaworld", ["reach-v3", "push-v3"], 2, 11)
    # Another seed first, in this process: nothing of it may leak into the next run.
    generate("metaworld", ["reach-v3", "push-v3"], 2, 12, tmp_path / "other", workers=1, sensors=sensors)
    generate(*args, tmp_path / "one", workers=1, sensors=sensors)
    generate(*args, tmp_path / "again", workers=1, sensors=sensors)
    generate(*args, tmp_path / "two", workers=2, sensors=sensors)
    one = digests(tmp_path / "one")
    assert set(one) == {"frames-00000.parquet", "sawyer-metaworld.toml", "generate.json"}
    assert one == digests(tmp_path / "again") == digests(tmp_path / "two")
    assert digests(tmp_path / "other")["frames-00000.parquet"] != one["frames-00000.parquet"]


@pytest.mark.slow
def test_tep_same_seed_same_bytes_any_worker_count(tmp_path):
    args = ("tep", ["base", "idv-6"], 1, 4)
    generate(*args, tmp_path / "one", workers=1, seconds=1200.0)
    generate(*args, tmp_path / "two", workers=2, seconds=1200.0)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_cli_generate(tmp_path):
    result = CliRunner().invoke(app, ["generate", "--env", "tep", "--tasks", "base", "--episodes", "1",
                                      "--seed", "2", "--out", str(tmp_path), "--workers", "1",
                                      "--seconds", "360", "--control-hz", "0.1", "--quantize",
                                      "--noise", "0.0001"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 episodes" in result.output
    toml = (tmp_path / "tennessee-eastman.toml").read_text()
    assert "control_hz = 0.1" in toml and "quantize = true" in toml
