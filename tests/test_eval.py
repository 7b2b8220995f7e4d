"""Evaluation: the Wilson interval, reports, the eval command."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from onshore.cli.evaluate import eval_command
from onshore.errors import ValidationError
from onshore.eval.report import figure, report_stem, write_report
from onshore.eval.runner import evaluate
from onshore.eval.stats import wilson_interval


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (8, 10, 0.4902, 0.9433),   # textbook example (Newcombe 1998 method 3 style)
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (45, 50, 0.7864, 0.9565),
    (1, 2, 0.0945, 0.9055),
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, example
])
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges_and_refusals():
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValidationError):
        wilson_interval(0, 0)
    with pytest.raises(ValidationError):
        wilson_interval(6, 5)


def test_unknown_policy_refused():
    with pytest.raises(ValidationError, match="unknown policy"):
        evaluate("metaworld", ["reach-v3"], 1, 0, policy="gpt", workers=1)


def test_report_json_and_png(tmp_path):
    report = evaluate("metaworld", ["reach-v3"], episodes=2, seed=3, workers=1)
    paths = write_report(report, tmp_path / "reports")
    data = json.loads(paths[0].read_text())
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["versions"]["metaworld"] == "3.1.1" and data["versions"]["mujoco"] == "3.3.0"
    assert data["seed"] == 3 and "success" in data["success_definition"]
    task = data["tasks"][0]
    assert task["task"] == "reach-v3" and len(task["episode_results"]) == 2
    assert all(isinstance(e["episode_seed"], int) for e in task["episode_results"])
    again = evaluate("metaworld", ["reach-v3"], episodes=2, seed=3, workers=1)
    assert again.to_dict()["tasks"] == report.to_dict()["tasks"]
    # a rerun with the same seed is a second report, never written over the first
    first = paths[0].read_bytes()
    paths2 = write_report(again, tmp_path / "reports")
    assert [p.name for p in paths2] == [paths[0].stem + "-2.json", paths[0].stem + "-2.png"]
    assert paths[0].read_bytes() == first and json.loads(paths2[0].read_text())["seed"] == 3
    assert paths[0].stem.endswith("-expert-seed3")  # named for the policy that ran
    assert not list((tmp_path / "reports").glob("*.partial"))


def test_tep_report_plot(tmp_path):
    report = evaluate("tep", ["base"], episodes=1, seed=0, workers=1, label="kansai-chemicals")
    paths = write_report(report, tmp_path)
    assert paths[1].stat().st_size > 1000
    # named for whose evaluation it is, in the file names and the title
    assert [p.name for p in paths] == ["eval-kansai-chemicals-tep-expert-seed0.json",
                                       "eval-kansai-chemicals-tep-expert-seed0.png"]
    fig = figure(report)
    assert "kansai-chemicals" in fig._suptitle.get_text()
    axes = [ax for ax in fig.axes if ax.has_data()]
    assert len(axes) == 6
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel().startswith("IAE (") and ax.get_ylabel().endswith("·h)")
        # the expert is the PI controller: one bar per scenario, no "PI controller" twin
        assert len(ax.containers) == 1
    pressure = next(ax for ax in axes if ax.get_title() == "IAE reactor_pressure")
    assert pressure.get_ylabel() == "IAE (kPa gauge·h)"


def test_success_report_names_member_and_units(tmp_path):
    report = evaluate("metaworld", ["reach-v3"], episodes=1, seed=0, workers=1, label="kansai-robotics")
    assert report_stem(report) == "eval-kansai-robotics-metaworld-expert-seed0"
    ax = figure(report).axes[0]
    assert "kansai-robotics" in ax.get_title()
    assert "fraction of episodes" in ax.get_xlabel() and ax.get_ylabel() == "task"


def test_eval_command_json(tmp_path):
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # two commands, so "eval" is a subcommand as in the main app
    out = CliRunner().invoke(app, ["eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "2",
                                   "--seed", "1", "--workers", "1", "--json",
                                   "--reports", str(tmp_path)])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["tasks"]["reach-v3"]["success_rate"] == 1.0 and data["sensors"] is None
    assert (tmp_path / "eval-metaworld-expert-seed1.json").exists()
    noisy = CliRunner().invoke(app, ["eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                                     "--workers", "1", "--json", "--noise", "0.01", "--quantize"])
    assert noisy.exit_code == 0, noisy.output
    assert json.loads(noisy.stdout)["sensors"] == {"noise": 0.01, "quantize": True, "bits": 16, "control_hz": None}
    table = CliRunner().invoke(app, ["eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes",
                                     "1", "--workers", "1"])
    assert table.exit_code == 0 and "reach-v3" in table.output


def test_eval_with_member_sensors_changes_what_the_policy_sees():
    from onshore.sim.sensors import SensorOptions

    clean = evaluate("metaworld", ["push-v3"], episodes=1, seed=5, workers=1)
    noisy = evaluate("metaworld", ["push-v3"], episodes=1, seed=5, workers=1,
                     sensors=SensorOptions(noise=0.02, quantize=True, bits=8))
    assert clean.sensors is None and noisy.sensors == {"noise": 0.02, "quantize": True, "bits": 8,
                                                       "control_hz": None}
    # the same episode (seed), a different trajectory: the expert acted on noisy readings
    assert noisy.tasks[0].mean_return != clean.tasks[0].mean_return


def _sealed_model_factory(folder):
    """A random tiny model for the Sawyer arm, sealed as training seals one, behind its factory."""
    import numpy as np
    import torch

    from onshore.model import io
    from onshore.model.network import EmbodimentSpec, FoundationModel, model_config, state_groups
    from onshore.model.policy import STEM, ModelPolicyFactory, model_meta, model_tensors
    from onshore.sim import metaworld

    emb = metaworld.embodiment()
    cfg = model_config("tiny")
    spec = EmbodimentSpec(emb.name, emb.state_dim, emb.action_dim, state_groups(emb, cfg.max_group),
                          (0.0,) * emb.state_dim, (1.0,) * emb.state_dim, (-1.0,) * emb.action_dim,
                          (1.0,) * emb.action_dim)
    torch.manual_seed(11)
    net = FoundationModel(cfg, [spec]).eval()
    rng = np.random.default_rng(0)
    vectors = {metaworld.task_text(t): rng.standard_normal(cfg.text_dim).astype(np.float32)
               for t in ("reach-v3", "push-v3")}
    tensors, tasks = model_tensors(net, vectors)
    key = bytes(range(32))
    written = io.write_artifact(folder, STEM, tensors, model_meta(net, tasks, "hashed-ngram"), key, "eval-test")
    return ModelPolicyFactory(str(folder), tuple(sorted(written.files.items())), emb.name, label="model:random",
                              key=key, context="eval-test", sealed=tuple(sorted(written.sealed.items())))


def test_a_model_evaluated_on_two_workers_gives_the_report_of_one(tmp_path):
    factory = _sealed_model_factory(tmp_path / "model")
    one = evaluate("metaworld", ["reach-v3", "push-v3"], episodes=3, seed=4, policy=factory, workers=1)
    # 2 workers: one task each to start with; 3: shares that cut across a task (episodes 0-1, 2-3, 4-5)
    for workers in (2, 3):
        assert evaluate("metaworld", ["reach-v3", "push-v3"], episodes=3, seed=4, policy=factory,
                        workers=workers).to_dict() == one.to_dict(), workers
    results = [e for t in one.tasks for e in t.episode_results]
    assert len(results) == 6 and len({e["episode_seed"] for e in results}) == 6
    # the episodes differ from each other (a run that repeated one episode would pass the equality too)
    assert len({e["return"] for e in results}) == 6


def test_the_worker_count_follows_the_size_of_the_job():
    from onshore.sim.parallel import MIN_JOBS_PER_WORKER, default_workers, workers_for

    assert workers_for(1, None) == 1 and workers_for(3, 8) == 3  # never more processes than jobs
    assert workers_for(MIN_JOBS_PER_WORKER - 1, None) == 1  # a short run is not worth a second process
    assert workers_for(1000, None) == default_workers()
    assert workers_for(10, 1) == 1
    with pytest.raises(ValidationError, match="--workers"):
        workers_for(10, 0)
