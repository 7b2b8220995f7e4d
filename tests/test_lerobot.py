"""LeRobotDataset v3.0 import and export, on real folders in tmp_path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onshore.errors import ValidationError
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Channel, Embodiment
from onshore.telemetry.lerobot import (
    LeRobotData,
    embodiment_from_lerobot,
    is_lerobot_v3,
    read_lerobot_v3,
    write_lerobot_v3,
)

ARM = Embodiment(
    name="toy-arm",
    control_hz=10.0,
    state=(Channel("joint_a", "rad", -3.0, 3.0), Channel("joint_b", "rad", -3.0, 3.0),
           Channel("gripper", "m", 0.0, 0.1)),
    action=(Channel("dq_a", "rad/s", -1.0, 1.0, 2.0), Channel("dq_b", "rad/s", -1.0, 1.0, 2.0)),
)


def frame_table(lengths=(7, 5, 9), tasks=("pick the bolt", "place the bolt"), seed=0,
                extra: bool = True) -> pa.Table:
    """Our frame schema, columns in the reader's canonical order, plus extra columns."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    ep = np.repeat(np.arange(len(lengths)), lengths)
    fr = np.concatenate([np.arange(k) for k in lengths])
    state = rng.uniform(-2, 2, (n, 3)).astype(np.float32)
    action = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    task_idx = np.array([e % len(tasks) for e in ep], np.int64)
    last = np.concatenate([np.arange(k) == k - 1 for k in lengths])
    cols = {
        F.EPISODE: pa.array(ep, pa.int64()),
        F.FRAME: pa.array(fr, pa.int64()),
        # LeRobot stores timestamps as float32: values exactly representable there round-trip
        F.TIMESTAMP: pa.array((fr / 10.0).astype(np.float32).astype(np.float64), pa.float64()),
        F.STATE: pa.array(list(state), pa.list_(pa.float32())),
        F.ACTION: pa.array(list(action), pa.list_(pa.float32())),
        F.TASK: pa.array([tasks[i] for i in task_idx], pa.string()),
        F.TASK_INDEX: pa.array(task_idx, pa.int64()),
        F.REWARD: pa.array(rng.normal(size=n).astype(np.float32), pa.float32()),
        F.DONE: pa.array(last, pa.bool_()),
        F.SUCCESS: pa.array(last & (ep % 2 == 0), pa.bool_()),
    }
    if extra:
        cols["fault"] = pa.array(rng.integers(0, 3, n), pa.int64())
        cols["fault.label"] = pa.array(rng.choice(["none", "valve stuck", "sensor drift"], n), pa.string())
        cols["observation.environment_state"] = pa.array(
            list(rng.normal(size=(n, 2)).astype(np.float32)), pa.list_(pa.float32()))
    return pa.table(cols)


# ------------------------------------------------------------------------------------ round trip

def test_round_trip_is_lossless_across_files_and_chunks(tmp_path: Path) -> None:
    t = frame_table(lengths=(7, 5, 9, 4, 6))
    out = tmp_path / "ds"
    # ~1 KiB per file and 2 files per chunk: several data files in several chunks.
    write_lerobot_v3(t, ARM, out, chunks_size=2, data_file_size_mb=0.001)

    files = sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))
    assert len(files) >= 3
    assert files[:3] == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                         "data/chunk-001/file-000.parquet"]
    assert is_lerobot_v3(out)

    got = read_lerobot_v3(out)
    assert isinstance(got, LeRobotData)
    assert got.table.schema == t.schema
    assert got.table.equals(t)
    assert got.fps == 10.0
    assert got.robot_type == "toy-arm"
    assert got.state_names == ["joint_a", "joint_b", "gripper"]
    assert got.action_names == ["dq_a", "dq_b"]
    assert got.tasks == ["pick the bolt", "place the bolt"]


def test_timestamp_is_written_as_float32_like_lerobot(tmp_path: Path) -> None:
    t = frame_table(lengths=(4, 3))
    detailed = t.set_column(t.column_names.index(F.TIMESTAMP), F.TIMESTAMP,
                            pa.array(t.column(F.TIMESTAMP).to_numpy() + 1e-9, pa.float64()))
    write_lerobot_v3(detailed, ARM, tmp_path / "ds")
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["timestamp"]["dtype"] == "float32"
    data = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert data.schema.field("timestamp").type == pa.float32()
    # read back as our float64, rounded to float32 precision
    got = read_lerobot_v3(tmp_path / "ds").table.column(F.TIMESTAMP).to_numpy()
    assert got.dtype == np.float64
    expected = detailed.column(F.TIMESTAMP).to_numpy().astype(np.float32).astype(np.float64)
    assert np.array_equal(got, expected)


def test_round_trip_single_file_and_without_extras(tmp_path: Path) -> None:
    t = frame_table(lengths=(3, 1, 4), tasks=("hold",), extra=False)
    write_lerobot_v3(t, ARM, tmp_path / "ds", robot_type="sawyer")
    got = read_lerobot_v3(tmp_path / "ds")
    assert got.table.equals(t)
    assert got.robot_type == "sawyer"
    assert [p.name for p in (tmp_path / "ds" / "data").rglob("*.parquet")] == ["file-000.parquet"]


def test_written_metadata_follows_v3_layout(tmp_path: Path) -> None:
    t = frame_table(lengths=(7, 5, 9))
    out = tmp_path / "ds"
    write_lerobot_v3(t, ARM, out, data_file_size_mb=0.001)

    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 21, 2)
    assert info["fps"] == 10 and isinstance(info["fps"], int)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["chunks_size"] == 1000 and info["data_files_size_in_mb"] == 0.001
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [3],
                                          "names": ["joint_a", "joint_b", "gripper"],
                                          "units": ["rad", "rad", "m"]}
    assert feats["action"]["names"] == ["dq_a", "dq_b"]
    assert feats["fault"] == {"dtype": "int64", "shape": [1], "names": None}
    assert feats["fault.label"]["dtype"] == "string"
    assert feats["observation.environment_state"]["shape"] == [2]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in feats

    # Data files: LeRobot's columns, vectors as fixed-size lists, global index, no task text.
    d0 = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert set(d0.column_names) == set(feats)
    assert d0.schema.field("observation.state").type == pa.list_(pa.float32(), 3)
    assert d0.column("index").to_pylist() == list(range(d0.num_rows))

    # Episode metadata: one row per episode with where its frames are, plus per-episode stats.
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == [0, 1, 2]
    assert [e["length"] for e in eps] == [7, 5, 9]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 7), (7, 12), (12, 21)]
    assert [e["tasks"] for e in eps] == [["pick the bolt"], ["place the bolt"], ["pick the bolt"]]
    assert all(e["meta/episodes/chunk_index"] == 0 and e["meta/episodes/file_index"] == 0 for e in eps)
    assert eps[1]["stats/action/count"] == [5]
    a1 = np.array(t.column("action").to_pylist()[7:12])
    np.testing.assert_allclose(eps[1]["stats/action/min"], a1.min(axis=0))
    np.testing.assert_allclose(eps[1]["stats/action/std"], a1.std(axis=0), rtol=1e-6)
    assert "stats/fault.label/min" not in eps[1]  # no stats for strings
    rows = 0
    for e in eps:  # each episode lies in the file the metadata names
        p = out / info["data_path"].format(chunk_index=e["data/chunk_index"], file_index=e["data/file_index"])
        idx = pq.read_table(p, columns=["index", "episode_index"])
        sel = [i for i, x in enumerate(idx.column("episode_index").to_pylist()) if x == e["episode_index"]]
        assert idx.column("index").to_pylist()[sel[0]] == e["dataset_from_index"]
        rows += len(sel)
    assert rows == 21

    # Dataset stats.
    stats = json.loads((out / "meta/stats.json").read_text())
    s = np.array(t.column("observation.state").to_pylist())
    np.testing.assert_allclose(stats["observation.state"]["min"], s.min(axis=0))
    np.testing.assert_allclose(stats["observation.state"]["max"], s.max(axis=0))
    np.testing.assert_allclose(stats["observation.state"]["mean"], s.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], s.std(axis=0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [21]
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["timestamp"]["count"] == [21] and len(stats["timestamp"]["min"]) == 1

    # Tasks: task text is the pandas index, as LeRobot reads it with pandas.read_parquet.
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick the bolt", "place the bolt"]
    assert tasks.column("task_index").to_pylist() == [0, 1]
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(out / "meta/tasks.parquet")
    assert df.index.name == "task"
    assert int(df.loc["place the bolt"].task_index) == 1


def test_table_without_task_text_gets_one_empty_task(tmp_path: Path) -> None:
    t = frame_table(extra=False).drop_columns([F.TASK, F.TASK_INDEX])
    write_lerobot_v3(t, ARM, tmp_path / "ds")
    got = read_lerobot_v3(tmp_path / "ds").table
    assert got.column(F.TASK).to_pylist() == [""] * t.num_rows
    assert got.drop_columns([F.TASK, F.TASK_INDEX]).equals(t)


# ------------------------------------------------------------------------------- write refusals

def test_write_refuses_non_empty_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError, match="not an empty folder"):
        write_lerobot_v3(frame_table(), ARM, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_lerobot_v3(frame_table(), ARM, empty)  # an empty folder is fine
    assert is_lerobot_v3(empty)


def test_write_refuses_bad_frames_and_writes_nothing(tmp_path: Path) -> None:
    t = frame_table(extra=False)
    wrong_width = Embodiment("two", 10.0, ARM.state[:2], ARM.action)
    with pytest.raises(ValidationError, match=r"episode 0 frame 0: column 'observation.state' has 3 values, "
                                              r"expected 2"):
        write_lerobot_v3(t, wrong_width, tmp_path / "a")
    state = t.column(F.STATE).to_pylist()
    state[9][2] = math.nan  # episode 1, frame 2, channel "gripper"
    bad = t.set_column(t.schema.get_field_index(F.STATE), F.STATE, pa.array(state, pa.list_(pa.float32())))
    with pytest.raises(ValidationError, match=r"episode 1 frame 2: column 'observation.state' channel "
                                              r"'gripper' is nan"):
        write_lerobot_v3(bad, ARM, tmp_path / "b")
    shuffled = pa.concat_tables([t.slice(7), t.slice(0, 7)])
    with pytest.raises(ValidationError, match="sort by episode_index and renumber"):
        write_lerobot_v3(shuffled, ARM, tmp_path / "c")
    with pytest.raises(ValidationError, match="reserves"):
        write_lerobot_v3(t.append_column("index", pa.array(range(t.num_rows))), ARM, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- read refusals

def test_refuses_other_codebase_versions(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_lerobot_v3(frame_table(), ARM, out)
    info_path = out / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    assert not is_lerobot_v3(out)
    with pytest.raises(ValidationError) as e:
        read_lerobot_v3(out)
    msg = str(e.value)
    assert str(info_path) in msg and "'v2.1'" in msg and "convert" in msg


def test_refuses_image_and_video_features(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_lerobot_v3(frame_table(), ARM, out)
    info_path = out / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.top"] = {"dtype": "video", "shape": [480, 640, 3],
                                                  "names": ["height", "width", "channels"]}
    info["features"]["observation.images.wrist"] = {"dtype": "image", "shape": [96, 96, 3],
                                                    "names": ["height", "width", "channels"]}
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValidationError, match="image and video features are not supported yet: "
                                              "observation.images.top, observation.images.wrist"):
        read_lerobot_v3(out)


@pytest.mark.parametrize("missing", ["meta/info.json", "meta/tasks.parquet",
                                     "meta/episodes/chunk-000/file-000.parquet",
                                     "data/chunk-000/file-000.parquet"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    out = tmp_path / "ds"
    write_lerobot_v3(frame_table(), ARM, out)
    (out / missing).unlink()
    with pytest.raises(ValidationError, match="missing") as e:
        read_lerobot_v3(out)
    assert str(out / missing) in str(e.value)


def test_malformed_metadata_names_file_and_field(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    write_lerobot_v3(frame_table(), ARM, out)
    info_path = out / "meta/info.json"
    info = json.loads(info_path.read_text())
    for mutate, field in ((lambda i: i.update(fps=0), "'fps'"),
                          (lambda i: i.update(total_frames=999), "'total_frames'"),
                          (lambda i: i["features"]["action"].update(names=["only-one"]),
                           "'features.action.names'"),
                          (lambda i: i["features"]["observation.state"].pop("shape"),
                           "'features.observation.state.shape'")):
        bad = json.loads(json.dumps(info))
        mutate(bad)
        info_path.write_text(json.dumps(bad))
        with pytest.raises(ValidationError) as e:
            read_lerobot_v3(out)
        assert str(info_path) in str(e.value) and field in str(e.value)
    info_path.write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        read_lerobot_v3(out)
    with pytest.raises(ValidationError, match="no such folder"):
        read_lerobot_v3(tmp_path / "nowhere")


def test_refuses_dataset_without_action(tmp_path: Path) -> None:
    root = build_by_hand(tmp_path / "hand", with_action=False)
    with pytest.raises(ValidationError, match="feature 'action' is missing"):
        read_lerobot_v3(root)


# ---------------------------------------------- interop: a v3.0 folder written from the spec

def build_by_hand(root: Path, with_action: bool = True) -> Path:
    """A small state-only v3.0 dataset, written here straight from the published layout, the way
    LeRobot's recorder writes it: float32 timestamps, fixed-size vectors, names as a dict,
    two episodes in two data files, tasks with the text as pandas index."""
    fps = 30
    lengths = [4, 3]
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["shoulder", "elbow"]}},
        "action": {"dtype": "float32", "shape": [2], "names": ["shoulder", "elbow"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if not with_action:
        del features["action"]
    info = {
        "codebase_version": "v3.0", "robot_type": "so101_follower", "total_episodes": 2,
        "total_frames": 7, "total_tasks": 2, "chunks_size": 1000, "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500, "fps": fps, "splits": {"train": "0:2"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None, "features": features,
    }
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/stats.json").write_text(json.dumps({
        "observation.state": {"min": [-1.0, 0.0], "max": [1.0, 0.5], "mean": [0.0, 0.25],
                              "std": [0.5, 0.1], "count": [7]},
        "action": {"min": [-0.2, -0.4], "max": [0.2, 0.4], "mean": [0.0, 0.0],
                   "std": [0.1, 0.2], "count": [7]},
    }))
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()),
                             "task": pa.array(["Grab the cube", "Open the valve"])}),
                   root / "meta/tasks.parquet")
    vec = pa.list_(pa.float32(), 2)
    index = 0
    for ep, (n, task) in enumerate(zip(lengths, [1, 0], strict=True)):
        cols = {
            "observation.state": pa.array([[0.1 * i, 0.05 * i + ep] for i in range(n)], vec),
            "action": pa.array([[0.01 * i, -0.01 * i] for i in range(n)], vec),
            "next.reward": pa.array([0.0] * (n - 1) + [1.0], pa.float32()),
            "next.done": pa.array([False] * (n - 1) + [True]),
            "timestamp": pa.array([i / fps for i in range(n)], pa.float32()),
            "frame_index": pa.array(range(n), pa.int64()),
            "episode_index": pa.array([ep] * n, pa.int64()),
            "index": pa.array(range(index, index + n), pa.int64()),
            "task_index": pa.array([task] * n, pa.int64()),
        }
        if not with_action:
            del cols["action"]
        path = root / f"data/chunk-000/file-{ep:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        index += n
    pq.write_table(pa.table({
        "episode_index": pa.array([0, 1], pa.int64()),
        "tasks": pa.array([["Open the valve"], ["Grab the cube"]], pa.list_(pa.string())),
        "length": pa.array(lengths, pa.int64()),
        "data/chunk_index": pa.array([0, 0], pa.int64()),
        "data/file_index": pa.array([0, 1], pa.int64()),
        "dataset_from_index": pa.array([0, 4], pa.int64()),
        "dataset_to_index": pa.array([4, 7], pa.int64()),
        "meta/episodes/chunk_index": pa.array([0, 0], pa.int64()),
        "meta/episodes/file_index": pa.array([0, 0], pa.int64()),
    }), root / "meta/episodes/chunk-000/file-000.parquet")
    return root


def test_reads_hand_built_state_only_dataset(tmp_path: Path) -> None:
    root = build_by_hand(tmp_path / "hand")
    assert is_lerobot_v3(root)
    d = read_lerobot_v3(root)
    t = d.table
    assert t.column_names == [F.EPISODE, F.FRAME, F.TIMESTAMP, F.STATE, F.ACTION, F.TASK, F.TASK_INDEX,
                              F.REWARD, F.DONE]
    for name in t.column_names:
        assert t.schema.field(name).type == F.TYPES[name], name
    assert t.column(F.EPISODE).to_pylist() == [0, 0, 0, 0, 1, 1, 1]
    assert t.column(F.FRAME).to_pylist() == [0, 1, 2, 3, 0, 1, 2]
    assert t.column(F.TASK).to_pylist() == ["Open the valve"] * 4 + ["Grab the cube"] * 3
    assert t.column(F.TASK_INDEX).to_pylist() == [1] * 4 + [0] * 3
    np.testing.assert_allclose(t.column(F.TIMESTAMP).to_pylist()[:4], [0, 1 / 30, 2 / 30, 3 / 30], rtol=1e-6)
    np.testing.assert_allclose(t.column(F.STATE).to_pylist()[5], [0.1, 1.05], rtol=1e-6)
    assert t.column(F.DONE).to_pylist() == [False, False, False, True, False, False, True]
    assert d.fps == 30 and d.robot_type == "so101_follower"
    assert d.state_names == ["shoulder", "elbow"] and d.action_names == ["shoulder", "elbow"]
    assert d.tasks == ["Grab the cube", "Open the valve"]

    # With no spec given, one is derived from names and stats.
    emb = embodiment_from_lerobot(d)
    assert emb.name == "so101-follower" and emb.control_hz == 30.0
    assert [c.name for c in emb.state] == ["shoulder", "elbow"]
    assert emb.state[0].low == pytest.approx(-1.1) and emb.state[0].high == pytest.approx(1.1)
    assert emb.action[1].low == pytest.approx(-0.44) and emb.action[1].high == pytest.approx(0.44)
    assert all(c.unit == "" and c.max_rate is None for c in emb.action)
    assert embodiment_from_lerobot(d, name="arm-7").name == "arm-7"
    with pytest.raises(ValidationError):
        embodiment_from_lerobot(d, name="Bad Name")

    # ... and it is enough to export the dataset again, losslessly.
    write_lerobot_v3(t, emb, tmp_path / "again")
    assert read_lerobot_v3(tmp_path / "again").table.equals(t)


def test_embodiment_from_data_when_stats_are_missing(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    t = frame_table()
    write_lerobot_v3(t, ARM, out)
    (out / "meta/stats.json").unlink()
    d = read_lerobot_v3(out)
    assert d.stats == {}
    emb = embodiment_from_lerobot(d)
    assert emb.name == "toy-arm"
    s = np.array(t.column(F.STATE).to_pylist())
    for i, c in enumerate(emb.state):
        assert c.low < s[:, i].min() and s[:, i].max() < c.high
        assert Embodiment.from_dict(emb.to_dict()) == emb  # a valid spec


def test_reader_refuses_frames_that_disagree_with_episode_metadata(tmp_path: Path) -> None:
    root = build_by_hand(tmp_path / "hand")
    p = root / "meta/episodes/chunk-000/file-000.parquet"
    eps = pq.read_table(p)
    eps = eps.set_column(eps.schema.get_field_index("length"), "length", pa.array([3, 4], pa.int64()))
    eps = eps.set_column(eps.schema.get_field_index("dataset_to_index"), "dataset_to_index",
                         pa.array([3, 7], pa.int64()))
    eps = eps.set_column(eps.schema.get_field_index("dataset_from_index"), "dataset_from_index",
                         pa.array([0, 3], pa.int64()))
    pq.write_table(eps, p)
    with pytest.raises(ValidationError, match="episode_index 0 but the episode metadata puts episode 1"):
        read_lerobot_v3(root)


def test_task_indices_are_assigned_or_checked(tmp_path: Path) -> None:
    t = frame_table(lengths=(4, 3), extra=False)
    text = ["weld", "weld", "inspect", "inspect", "grind", "weld", "weld"]  # two tasks in episode 0
    t = t.set_column(t.schema.get_field_index(F.TASK), F.TASK, pa.array(text)).drop_columns([F.TASK_INDEX])
    write_lerobot_v3(t, ARM, tmp_path / "ds")
    d = read_lerobot_v3(tmp_path / "ds")
    assert d.tasks == ["weld", "inspect", "grind"]  # numbered in order of first appearance
    assert d.table.column(F.TASK_INDEX).to_pylist() == [0, 0, 1, 1, 2, 0, 0]
    assert d.table.column(F.TASK).to_pylist() == text
    eps = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    assert eps.column("tasks").to_pylist() == [["weld", "inspect"], ["grind", "weld"]]

    clash = t.append_column(F.TASK_INDEX, pa.array([0, 0, 0, 0, 1, 2, 2], pa.int64()))
    with pytest.raises(ValidationError, match="task_index 0 is used for two tasks"):
        write_lerobot_v3(clash, ARM, tmp_path / "x")
    gap = t.append_column(F.TASK_INDEX, pa.array([0, 0, 1, 1, 5, 0, 0], pa.int64()))
    with pytest.raises(ValidationError, match=r"task_index values must be 0\.\.2"):
        write_lerobot_v3(gap, ARM, tmp_path / "y")
    ragged = t.append_column("wrench", pa.array([[1.0], [1.0, 2.0]] + [[0.0]] * 5, pa.list_(pa.float32())))
    with pytest.raises(ValidationError, match="column 'wrench' has lists of different lengths"):
        write_lerobot_v3(ragged, ARM, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


# ------------------------------------------------- what LeRobot's policies and tools need

PICK = Embodiment(
    name="pick-arm",
    control_hz=10.0,
    # robot and world channels interleaved on purpose: the export splits, the import restores
    state=(Channel("hand_x", "m", -3.0, 3.0), Channel("obj_x", "m", -3.0, 3.0), Channel("obj_y", "m", -3.0, 3.0),
           Channel("gripper", "1", -3.0, 3.0), Channel("goal_x", "m", -3.0, 3.0)),
    action=(Channel("dq_a", "rad/s", -1.0, 1.0), Channel("dq_b", "rad/s", -1.0, 1.0)),
    extra={"groups": {"hand": ["hand_x", "gripper"], "obj": ["obj_x", "obj_y"], "goal": ["goal_x"]},
           "environment_groups": ["obj", "goal"]},
)


def pick_table(lengths=(6, 4)) -> pa.Table:
    t = frame_table(lengths=lengths, extra=False)
    rng = np.random.default_rng(3)
    state = rng.uniform(-2, 2, (t.num_rows, 5)).astype(np.float32)
    return t.set_column(t.column_names.index(F.STATE), F.STATE, pa.array(list(state), pa.list_(pa.float32())))


def test_environment_groups_become_environment_state_and_come_back_in_order(tmp_path: Path) -> None:
    from onshore.telemetry.provenance import episode_fingerprints

    t = pick_table()
    write_lerobot_v3(t, PICK, tmp_path / "ds")
    feats = json.loads((tmp_path / "ds/meta/info.json").read_text())["features"]
    # LeRobot's dataset_to_policy_features: observation.state is STATE, environment_state is ENV
    assert feats["observation.state"] == {"dtype": "float32", "shape": [2], "names": ["hand_x", "gripper"],
                                          "units": ["m", "1"]}
    assert feats["observation.environment_state"] == {"dtype": "float32", "shape": [3],
                                                      "names": ["obj_x", "obj_y", "goal_x"],
                                                      "units": ["m", "m", "m"]}
    assert feats["action"]["units"] == ["rad/s", "rad/s"]
    data = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.environment_state").type == pa.list_(pa.float32(), 3)
    state = np.array(t.column(F.STATE).to_pylist(), np.float32)
    assert np.array_equal(np.array(data.column("observation.state").to_pylist()), state[:, [0, 3]])
    assert np.array_equal(np.array(data.column("observation.environment_state").to_pylist()), state[:, [1, 2, 4]])
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    assert len(stats["observation.environment_state"]["mean"]) == 3

    # Against the embodiment the state is whole again, in its order: same values, same fingerprints.
    back = read_lerobot_v3(tmp_path / "ds", [c.name for c in PICK.state])
    assert back.state_names == [c.name for c in PICK.state]
    assert "observation.environment_state" not in back.table.column_names
    assert back.table.column(F.STATE).to_pylist() == t.column(F.STATE).to_pylist()
    assert episode_fingerprints(back.table) == episode_fingerprints(t)
    # Without it (any LeRobot dataset), the environment state is an extra column as LeRobot has it.
    plain = read_lerobot_v3(tmp_path / "ds")
    assert plain.state_names == ["hand_x", "gripper"]
    guessed = embodiment_from_lerobot(plain)  # our units come back with the names
    assert [(c.name, c.unit) for c in guessed.state] == [("hand_x", "m"), ("gripper", "1")]
    assert [c.unit for c in guessed.action] == ["rad/s", "rad/s"]
    assert plain.table.column("observation.environment_state").to_pylist()[0] == pytest.approx(state[0, [1, 2, 4]])
    # Names that do not make up the embodiment's state leave the folder as it is.
    other = read_lerobot_v3(tmp_path / "ds", ["hand_x", "gripper", "obj_x", "obj_y", "elsewhere"])
    assert other.state_names == ["hand_x", "gripper"]


@pytest.mark.parametrize("extra, match", [
    ({"environment_groups": "obj"}, "must be a list of group names"),
    ({"environment_groups": ["obj"]}, "has no 'extra.groups' table"),
    ({"groups": {"obj": ["obj_x"]}, "environment_groups": ["objects"]}, "names group 'objects'"),
    ({"groups": {"obj": ["obj_z"]}, "environment_groups": ["obj"]}, "channel 'obj_z', which is not a state"),
    ({"groups": {"all": ["hand_x", "obj_x", "obj_y", "gripper", "goal_x"]}, "environment_groups": ["all"]},
     "takes every state channel"),
])
def test_bad_environment_groups_are_refused_before_writing(tmp_path: Path, extra: dict, match: str) -> None:
    emb = Embodiment(name="pick-arm", control_hz=10.0, state=PICK.state, action=PICK.action, extra=extra)
    with pytest.raises(ValidationError, match=match):
        write_lerobot_v3(pick_table(), emb, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []


def test_own_environment_state_column_clashes_with_environment_groups(tmp_path: Path) -> None:
    t = pick_table()
    t = t.append_column("observation.environment_state", pa.array([[0.0]] * t.num_rows, pa.list_(pa.float32())))
    with pytest.raises(ValidationError, match="fills that feature from its environment groups"):
        write_lerobot_v3(t, PICK, tmp_path / "ds")


def test_fps_is_an_integer_when_the_rate_is_whole() -> None:
    from onshore.telemetry.lerobot import lerobot_fps

    assert lerobot_fps(80.00000000000001) == 80 and isinstance(lerobot_fps(80.00000000000001), int)
    assert lerobot_fps(1 / (5 * 0.0025)) == 80 and isinstance(lerobot_fps(1 / (5 * 0.0025)), int)
    assert lerobot_fps(12.5) == 12.5
    assert lerobot_fps(1 / 1.8) == pytest.approx(0.5555555555555556)  # a slow plant keeps its rate


def test_provenance_is_kept_per_episode_and_the_card_is_written(tmp_path: Path) -> None:
    from onshore.telemetry.provenance import read_provenances

    block = {"dataset": "arms", "owner": "steelco", "workspace": "w", "site": "sakai", "action": "export",
             "decision_index": 4, "policy_hash": "0" * 64, "cedar_hash": "1" * 64}
    seen: list[dict] = []

    def card(info: dict) -> str:
        seen.append(info)
        return "---\nlicense: \"other\"\n---\n"

    write_lerobot_v3(pick_table(), PICK, tmp_path / "ds", provenance=block, card=card)
    assert (tmp_path / "ds/README.md").read_text() == "---\nlicense: \"other\"\n---\n"
    assert seen[0] == json.loads((tmp_path / "ds/meta/info.json").read_text())
    eps = pq.read_table(tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    assert [json.loads(x) for x in eps.column("onshore/provenance").to_pylist()] == [block, block]
    # A tool that rewrites info.json without our block (as aggregate_datasets does): still found.
    info_path = tmp_path / "ds/meta/info.json"
    info = json.loads(info_path.read_text())
    del info["onshore"]
    info_path.write_text(json.dumps(info))
    assert read_provenances(tmp_path / "ds") == [block]
    # A malformed episode block is refused, naming the file and column.
    eps = eps.set_column(eps.column_names.index("onshore/provenance"), "onshore/provenance",
                         pa.array(["{not json", "{not json"]))
    pq.write_table(eps, tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet")
    with pytest.raises(ValidationError, match="file-000.parquet column 'onshore/provenance'"):
        read_provenances(tmp_path / "ds")


def test_metaworld_exports_objects_and_goal_as_environment_state() -> None:
    from onshore.sim import metaworld
    from onshore.telemetry.lerobot import environment_channels

    emb = metaworld.embodiment()
    env = environment_channels(emb)
    robot = [c.name for i, c in enumerate(emb.state) if i not in env]
    assert robot == ["hand_x", "hand_y", "hand_z", "gripper_open",
                     "prev_hand_x", "prev_hand_y", "prev_hand_z", "prev_gripper_open"]
    assert {emb.state[i].name.removeprefix("prev_").split("_")[0] for i in env} == {"obj1", "obj2", "goal"}
