"""Meta-World telemetry: the embodiment, the scripted experts, generated files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _simcheck import check_generated
from onshore.errors import ValidationError
from onshore.eval.protocol import Policy
from onshore.eval.runner import evaluate
from onshore.sim import metaworld as mw
from onshore.sim.generate import generate
from onshore.sim.sensors import SensorOptions

FIVE = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3"]


def test_embodiment_from_env_spaces():
    emb = mw.embodiment()
    assert emb.name == "sawyer-metaworld"
    assert (emb.state_dim, emb.action_dim) == (39, 4)
    assert emb.control_hz == pytest.approx(80.0)
    assert all(np.isfinite([c.low, c.high]).all() and c.low < c.high for c in emb.state + emb.action)
    names = [c.name for c in emb.state]
    assert names[:4] == ["hand_x", "hand_y", "hand_z", "gripper_open"]
    assert names[18] == "prev_hand_x" and names[-3:] == ["goal_x", "goal_y", "goal_z"]
    assert [(c.low, c.high) for c in emb.action] == [(-1.0, 1.0)] * 4
    assert emb.state[0].low == pytest.approx(-0.525)  # from Meta-World's hand space


def test_task_text_and_refusals():
    assert mw.task_text("pick-place-v3") == "pick place"
    assert mw.task_text("button-press-topdown-v3") == "button press topdown"
    assert len(mw.all_tasks()) == 50
    with pytest.raises(ValidationError, match="unknown Meta-World task"):
        mw.check_tasks(["pick-place-v2"])
    assert isinstance(mw.MetaWorldExpert(), Policy)


@pytest.mark.slow
def test_expert_success_at_least_90_percent():
    report = evaluate("metaworld", FIVE, episodes=5, seed=0, workers=2)
    successes = sum(t.successes for t in report.tasks)
    assert [t.task for t in report.tasks] == FIVE
    assert successes / 25 >= 0.9, {t.task: t.success_rate for t in report.tasks}
    for t in report.tasks:
        assert 0 < t.mean_length <= 500 and t.mean_return > 0


def test_generate_files_with_sensors(tmp_path):
    sensors = SensorOptions(noise=0.0005, quantize=True, bits=16, control_hz=40.0)
    res = generate("metaworld", ["reach-v3", "pick-place-v3"], 2, 3, tmp_path, workers=1,
                   sensors=sensors)
    assert res.episodes == 4 and res.successes >= 3
    table, emb = check_generated(tmp_path, "sawyer-metaworld")
    assert emb.control_hz == pytest.approx(40.0)
    assert emb.extra["sensors"] == {"noise": 0.0005, "quantize": True, "bits": 16, "control_hz": 40.0}
    assert set(table.column("task").to_pylist()) == {"reach", "pick place"}
    ts = table.column("timestamp").to_numpy()
    assert np.allclose(np.diff(ts[:5]), 0.025)  # 40 Hz: every other 80 Hz simulator step
    # Quantised readings sit on the 16-bit grid of each channel's range.
    state = np.array(table.column("observation.state").to_pylist(), dtype=np.float64)
    low = np.array([c.low for c in emb.state])
    span = np.array([c.high - c.low for c in emb.state])
    codes = (state - low) / span * 65535
    assert np.abs(codes - np.rint(codes)).max() < 0.02  # float32 storage rounding only
    # Episodes end 10 frames after first success, or at the step limit.
    ep = table.column("episode_index").to_numpy()
    succ = table.column("next.success").to_numpy(zero_copy_only=False)
    for e in range(4):
        s = succ[ep == e]
        if s.any():
            assert len(s) - 1 - int(np.argmax(s)) == mw.AFTER_SUCCESS_FRAMES
    side = json.loads(res.sidecar_path.read_text())
    assert side["versions"]["metaworld"] == "3.1.1" and side["seed"] == 3


def test_generate_refusals(tmp_path):
    with pytest.raises(ValidationError, match="faster than the simulator"):
        generate("metaworld", ["reach-v3"], 1, 0, tmp_path / "a", sensors=SensorOptions(control_hz=200))
    with pytest.raises(ValidationError, match="unknown simulator"):
        generate("gazebo", None, 1, 0, tmp_path / "b")
    with pytest.raises(ValidationError, match="episodes"):
        generate("metaworld", ["reach-v3"], 0, 0, tmp_path / "c")
    with pytest.raises(ValidationError, match="noise"):
        SensorOptions(noise=-1)
    generate("metaworld", ["reach-v3"], 1, 0, tmp_path / "d", workers=1)
    with pytest.raises(ValidationError, match="already holds"):
        generate("metaworld", ["reach-v3"], 1, 0, tmp_path / "d", workers=1)
