"""Tennessee Eastman telemetry: the PI controller as expert, scenarios, fault labels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from _simcheck import check_generated
from onshore.eval.protocol import Policy
from onshore.eval.runner import evaluate
from onshore.sim import tep
from onshore.sim.generate import generate
from onshore.sim.rollout import EpisodeSpec, rollout


def test_embodiment_from_simulator():
    emb = tep.embodiment()
    assert emb.name == "tennessee-eastman"
    assert (emb.state_dim, emb.action_dim) == (41, 12)
    assert emb.control_hz == pytest.approx(1 / 1.8)
    assert emb.state[6].name == "reactor_pressure" and emb.state[6].high == 4000.0
    assert all(c.low < c.high and np.isfinite([c.low, c.high]).all() for c in emb.state)
    assert [(c.low, c.high) for c in emb.action] == [(0.0, 100.0)] * 12
    assert isinstance(tep.TepExpert(), Policy)
    assert tep.task_text("idv-4") == tep.task_text("base")
    assert len(tep.all_tasks()) == 1 + len(tep.SETPOINT_SCENARIOS) + 20


def test_pi_controller_runs_one_hour_without_shutdown():
    env = tep.TepEnv()
    ep = rollout(env, env.expert(), EpisodeSpec("tep", "base", 0, 0, 0), seconds=3600.0)
    assert ep.length == 2000 and not ep.terminated
    assert ep.success.all()  # inside every operating limit throughout
    assert ep.timestamp[-1] == pytest.approx(3600.0 - 1.8)
    emb = tep.embodiment()
    low = np.array([c.low for c in emb.state])
    high = np.array([c.high for c in emb.state])
    assert ((ep.state >= low) & (ep.state <= high)).all()


def test_generate_fault_labels_and_setpoint_change(tmp_path):
    res = generate("tep", ["idv-1", "production-down"], 1, 5, tmp_path, workers=1, seconds=3600.0)
    assert res.shutdowns == 0
    table, emb = check_generated(tmp_path, "tennessee-eastman", {"fault": pa.int64()})
    ep = table.column("episode_index").to_numpy()
    fault = table.column("fault").to_numpy()
    ts = table.column("timestamp").to_numpy()
    f0 = fault[ep == 0]
    onset = ts[ep == 0][np.argmax(f0 > 0)]
    assert set(np.unique(f0)) == {0, 1} and (np.diff(f0) >= 0).all()
    assert 0.25 * 3600 <= onset <= 0.5 * 3600 + 3.6
    assert (fault[ep == 1] == 0).all()
    assert table.column("task").to_pylist()[-1] == "lower the production rate set-point by 2 percent"
    # The PI controller ramps production towards the lower set-point.
    state = np.array(table.column("observation.state").to_pylist())
    prod = state[ep == 1, 16]
    assert prod[-200:].mean() < prod[:200].mean()


def test_eval_reports_iae_against_pi_baseline():
    report = evaluate("tep", ["base"], episodes=1, seed=1, workers=1)
    t = report.task("base")
    assert t.success_rate == 1.0 and t.metrics["shutdowns"] == 0
    assert set(t.metrics["iae"]) == set(tep.CONTROLLED)
    assert all(v >= 0 for v in t.metrics["iae"].values())
    # the expert *is* the PI controller: it is not shown against itself
    assert t.baseline is None
    assert report.units["iae.reactor_pressure"] == "kPa gauge·h"
