"""LeRobotDataset v3.0 interchange: read a v3.0 folder into a frame table, write one back out.

Written from the published layout of the format (no code of the ``lerobot`` package is used or
imported). A v3.0 dataset is a folder::

    meta/info.json                               schema (features), fps, counts, path templates
    meta/stats.json                              per-feature statistics over the whole dataset
    meta/tasks.parquet                           task text (pandas index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet     one row per episode: length, tasks, where its
                                                 frames are (data/chunk_index, data/file_index,
                                                 dataset_from_index, dataset_to_index), stats/...
    data/chunk-000/file-000.parquet              frames of many episodes, one row per frame

Choices made here, each on purpose:

* Lossless for our frame schema (``onshore.telemetry.frames``) but for one column:
  ``read_lerobot_v3`` of what ``write_lerobot_v3`` wrote gives back the same columns, values and
  Arrow types, except that ``timestamp`` is written as float32 and declared ``"dtype":
  "float32"``, as LeRobot writes and expects it (LeRobot's ``aggregate_datasets`` refuses to
  merge datasets whose features differ, so a float64 timestamp could never join a recorded
  dataset); it reads back as float64 rounded to float32 (about 7 significant digits: 0.1 ms
  after an hour). The reader accepts float32 and float64 timestamps. Vectors
  (``observation.state``, ``action``, list-valued extras) are written as fixed-size lists, as
  LeRobot writes them, and read back as ``list<...>``.
* The ``task`` text is not stored per frame (as in LeRobot): frames carry ``task_index`` and
  ``meta/tasks.parquet`` maps it to the text. The reader always returns both ``task`` and
  ``task_index``. A table without ``task`` is written with one task, the empty string.
* LeRobot's global ``index`` column is written and dropped again on read; a frame table may not
  have its own ``index`` column.
* Refused on read, with a message naming the file and field: a ``codebase_version`` other than
  ``v3.0``, image or video features (not supported yet), features of more than one dimension,
  a dataset without ``observation.state`` or ``action`` (our frame schema needs both), missing
  or malformed metadata, data files that disagree with the episode metadata, NaN or Inf in a
  float column.
* Refused on write, before anything is written: a non-empty output folder, widths that do not
  match the embodiment, episodes that are not numbered 0..N-1 in row order, frames not numbered
  0..len-1 within their episode, NaN or Inf, task indices that are not 0..T-1 or that map to more
  than one task text, column types LeRobot cannot declare. The folder is assembled next to
  ``out`` and renamed into place, so a failed write leaves nothing behind.
* Statistics (``meta/stats.json`` and ``stats/<feature>/<stat>`` columns of the episode
  metadata) have LeRobot's keys: min, max, mean, std (population), count and the quantiles
  q01, q10, q50, q90, q99, for every numeric or boolean feature (not strings). They are computed
  in float64 and the quantiles are exact (LeRobot estimates them from histograms and, over a
  whole dataset, keeps an envelope of per-episode quantiles), so values may differ from
  LeRobot's in the last digits or, for quantiles, a little more.
* The robot's own channels go to ``observation.state`` and the channels of the groups the
  embodiment names in ``extra.environment_groups`` (objects, goals: the world the robot acts in)
  to ``observation.environment_state``, each in the embodiment's channel order, so that LeRobot's
  ACT and Diffusion policies, which need an image or an environment state, accept the export.
  ``read_lerobot_v3(..., state_names=...)`` puts the two back together in the embodiment's order
  (so fingerprints and re-ingest are unchanged); without ``state_names`` an environment state is
  returned as an extra column, as for any LeRobot dataset.
* Every float vector feature carries ``units`` (one per name, from the embodiment) beside its
  ``names``; LeRobot keeps feature entries whole. ``fps`` is an integer whenever the control rate
  is whole (within float noise), as LeRobot writes it; a slower-than-1 Hz plant keeps its
  fractional rate (LeRobot's loader and delta timestamps take it).
* Provenance is written three times: the ``onshore`` block of ``meta/info.json`` and the Parquet
  metadata of each data file (which LeRobot's tools drop when they rewrite a dataset), and a
  ``onshore/provenance`` column of the episode metadata (one JSON block per episode), which
  LeRobot's ``aggregate_datasets`` carries along with every episode. The fingerprint check on
  ingest stays the backstop for tools that drop all three (``delete_episodes`` and
  ``split_dataset`` rebuild episode rows from a fixed set of columns).
* ``card``, when given, renders ``README.md`` (the Hugging Face dataset card) from the info.
* Data files are cut when the next episode would take the file past ``data_file_size_mb``,
  estimated from in-memory (uncompressed) bytes; an episode is never split across files, and a
  file holds at least one episode. Files go ``file-000`` .. ``file-{chunks_size-1}`` in a chunk,
  then the next chunk.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onshore.errors import ValidationError
from onshore.names import check_name
from onshore.telemetry import frames as F
from onshore.telemetry.embodiment import Channel, Embodiment
from onshore.telemetry.provenance import EPISODE_COLUMN as PROVENANCE_EPISODE_COLUMN
from onshore.telemetry.provenance import INFO_KEY as PROVENANCE_INFO_KEY
from onshore.telemetry.provenance import with_provenance

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_FILES_SIZE_MB = 200
INDEX = "index"  # LeRobot's global frame index
ENV_STATE = "observation.environment_state"
CARD_PATH = "README.md"
#: Embodiment ``extra`` key: names of ``extra.groups`` whose channels describe the environment.
ENVIRONMENT_GROUPS = "environment_groups"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)

#: Margin added on each side of the observed range when limits are guessed from data.
LIMIT_MARGIN = 0.05

_ARROW_TO_DTYPE: dict[pa.DataType, str] = {
    pa.bool_(): "bool",
    pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
    pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
    pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
    pa.string(): "string", pa.large_string(): "string",
}
_DTYPE_TO_ARROW: dict[str, pa.DataType] = {v: k for k, v in _ARROW_TO_DTYPE.items() if k != pa.large_string()}
_CAMERA_DTYPES = ("image", "video")
#: Columns LeRobot itself adds to every frame (plus ``timestamp``).
_LEROBOT_INDEX_COLUMNS = (F.FRAME, F.EPISODE, INDEX, F.TASK_INDEX)
#: Our known columns in the order the reader returns them; extras follow in feature order.
_KNOWN_ORDER = (F.EPISODE, F.FRAME, F.TIMESTAMP, F.STATE, F.ACTION, F.TASK, F.TASK_INDEX,
                F.REWARD, F.DONE, F.SUCCESS)


@dataclass
class LeRobotData:
    """A LeRobotDataset v3.0 read into our frame schema.

    ``table`` has the frame columns of ``onshore.telemetry.frames`` (always ``task`` and
    ``task_index``; ``next.*`` where the dataset has them) and any other non-camera feature as an
    extra column. ``state_names``/``action_names`` come from the feature ``names`` (generated as
    ``state_0``, ``action_0``... where the dataset gives none). ``info`` is ``meta/info.json`` as
    parsed; ``stats`` is ``meta/stats.json`` (empty if the dataset has none).
    """

    table: pa.Table
    fps: float
    robot_type: str | None
    state_names: list[str]
    action_names: list[str]
    info: dict[str, Any]
    tasks: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None


# --------------------------------------------------------------------------------------------
# reading


def is_lerobot_v3(path: Path) -> bool:
    """True if ``path`` is a folder whose ``meta/info.json`` says ``codebase_version`` v3.0."""
    try:
        info = json.loads((Path(path) / INFO_PATH).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("codebase_version") == CODEBASE_VERSION


def _fail(path: Path | str, msg: str) -> ValidationError:
    return ValidationError(f"{path}: {msg}")


def _load_info(folder: Path) -> dict[str, Any]:
    path = folder / INFO_PATH
    if not folder.is_dir():
        raise ValidationError(f"{folder}: no such folder; give the root of a LeRobotDataset v3.0 "
                              "(the folder that holds meta/ and data/)")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(path, "missing; a LeRobotDataset v3.0 folder must have meta/info.json "
                          "(is this the dataset's root folder?)") from None
    except (OSError, ValueError) as e:
        raise _fail(path, f"not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise _fail(path, "must hold a JSON object")
    version = info.get("codebase_version")
    if not isinstance(version, str):
        raise _fail(path, "field 'codebase_version' is missing; expected \"v3.0\"")
    if version != CODEBASE_VERSION:
        m = re.match(r"^v?(\d+)", version)
        if m and int(m.group(1)) < 3:
            hint = ("convert it to v3.0 first with LeRobot's converter "
                    "(python -m lerobot.scripts.convert_dataset_v21_to_v30), then import again")
        else:
            hint = "this Onshore reads v3.0 only; export the dataset as v3.0 or upgrade Onshore"
        raise _fail(path, f"codebase_version is {version!r}, not \"v3.0\"; {hint}")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise _fail(path, f"field 'fps' must be a positive number, got {fps!r}")
    feats = info.get("features")
    if not isinstance(feats, dict) or not feats:
        raise _fail(path, "field 'features' must be a non-empty object")
    for key, ft in feats.items():
        where = f"features.{key}"
        if not isinstance(ft, dict):
            raise _fail(path, f"field '{where}' must be an object")
        if not isinstance(ft.get("dtype"), str):
            raise _fail(path, f"field '{where}.dtype' must be a string")
        shape = ft.get("shape")
        if not isinstance(shape, list | tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise _fail(path, f"field '{where}.shape' must be a list of non-negative integers")
    for key in ("total_episodes", "total_frames", "total_tasks"):
        v = info.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise _fail(path, f"field '{key}' must be a non-negative integer, got {v!r}")
    dp = info.get("data_path", DATA_PATH)
    if not isinstance(dp, str) or "{chunk_index" not in dp or "{file_index" not in dp:
        raise _fail(path, "field 'data_path' must be a template with {chunk_index} and {file_index}, "
                          f"got {dp!r}")
    return info


def _names(info: dict[str, Any], key: str, width: int, prefix: str, path: Path) -> list[str]:
    raw = info["features"][key].get("names")
    if raw is None:
        return [f"{prefix}_{i}" for i in range(width)]
    if isinstance(raw, dict):  # older style: {"motors": [...]} (possibly several groups)
        flat: list[Any] = []
        for v in raw.values():
            flat.extend(v if isinstance(v, list) else [v])
        raw = flat
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise _fail(path, f"field 'features.{key}.names' must be a list of non-empty strings")
    if len(raw) != width:
        raise _fail(path, f"field 'features.{key}.names' has {len(raw)} names but the shape says "
                          f"{width} channels")
    return list(raw)


def _read_tasks(folder: Path) -> list[str]:
    path = folder / TASKS_PATH
    if not path.is_file():
        raise _fail(path, "missing; a LeRobotDataset v3.0 folder must have meta/tasks.parquet")
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise _fail(path, f"not a readable Parquet file ({e})") from None
    if F.TASK_INDEX not in t.column_names:
        raise _fail(path, "column 'task_index' is missing")
    text_col = next((c for c in (F.TASK, "__index_level_0__") if c in t.column_names), None)
    if text_col is None:
        raise _fail(path, "column 'task' (the pandas index with the task text) is missing")
    if not pa.types.is_integer(t.schema.field(F.TASK_INDEX).type):
        raise _fail(path, "column 'task_index' must hold integers")
    idx = t.column(F.TASK_INDEX).to_pylist()
    texts = t.column(text_col).to_pylist()
    if any(x is None for x in texts) or any(not isinstance(x, str) for x in texts):
        raise _fail(path, "column 'task' must hold text in every row")
    if sorted(i for i in idx if i is not None) != list(range(len(idx))):
        raise _fail(path, f"column 'task_index' must number the tasks 0..{len(idx) - 1}, got {idx}")
    out = [""] * len(idx)
    for i, s in zip(idx, texts, strict=True):
        out[i] = s
    return out


_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index",
                    "dataset_from_index", "dataset_to_index")


def _read_episodes(folder: Path) -> dict[str, np.ndarray]:
    root = folder / EPISODES_DIR
    paths = sorted(root.glob("chunk-*/file-*.parquet")) if root.is_dir() else []
    if not paths:
        raise _fail(folder / EPISODES_PATH.format(chunk_index=0, file_index=0),
                    "missing; a LeRobotDataset v3.0 folder must have episode metadata under "
                    "meta/episodes/")
    cols: dict[str, list[np.ndarray]] = {c: [] for c in _EPISODE_COLUMNS}
    for p in paths:
        try:
            names = pq.read_schema(p).names
            missing = [c for c in _EPISODE_COLUMNS if c not in names]
            if missing:
                raise _fail(p, f"column(s) {', '.join(missing)} missing from the episode metadata")
            t = pq.read_table(p, columns=list(_EPISODE_COLUMNS))
        except (OSError, pa.ArrowException) as e:
            raise _fail(p, f"not a readable Parquet file ({e})") from None
        for c in _EPISODE_COLUMNS:
            col = t.column(c)
            if not pa.types.is_integer(col.type) or col.null_count:
                raise _fail(p, f"column '{c}' must hold integers in every row")
            cols[c].append(col.to_numpy().astype(np.int64))
    eps = {c: np.concatenate(v) for c, v in cols.items()}
    order = np.argsort(eps["episode_index"], kind="stable")
    eps = {c: v[order] for c, v in eps.items()}
    if len(np.unique(eps["episode_index"])) != len(order):
        raise _fail(root, "an episode_index appears more than once in the episode metadata")
    if np.any(eps["length"] != eps["dataset_to_index"] - eps["dataset_from_index"]):
        i = int(np.nonzero(eps["length"] != eps["dataset_to_index"] - eps["dataset_from_index"])[0][0])
        raise _fail(root, f"episode {int(eps['episode_index'][i])}: 'length' does not equal "
                          "dataset_to_index - dataset_from_index")
    return eps


def _to_list_type(col: pa.ChunkedArray, value_type: pa.DataType | None = None) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t) or pa.types.is_list(t):
        return col.cast(pa.list_(value_type or t.value_type))
    return col


def read_lerobot_v3(folder: Path, state_order: list[str] | None = None) -> LeRobotData:
    """Read a LeRobotDataset v3.0 folder into a frame table; refuse what we cannot keep.

    Reads every data file the episode metadata points to, in episode order, and checks that the
    frames agree with that metadata. Raises ``ValidationError`` naming the file and field.
    ``state_order`` (an embodiment's state channels): when ``observation.state`` and
    ``observation.environment_state`` together name exactly these channels, they are joined
    back into one ``observation.state`` in this order (what ``write_lerobot_v3`` split);
    otherwise the environment state stays an extra column.
    """
    folder = Path(folder)
    info = _load_info(folder)
    info_path = folder / INFO_PATH
    feats: dict[str, dict[str, Any]] = info["features"]

    cameras = [k for k, ft in feats.items() if ft["dtype"] in _CAMERA_DTYPES]
    if cameras:
        raise _fail(info_path, "image and video features are not supported yet: "
                               f"{', '.join(cameras)}; import a dataset without camera features")
    for need in (F.STATE, F.ACTION):
        if need not in feats:
            raise _fail(info_path, f"feature '{need}' is missing; Onshore frames need both "
                                   "'observation.state' and 'action' (a state-only recording cannot "
                                   "be used to train a policy: add the commanded actions)")
    for need in (F.EPISODE, F.FRAME, F.TIMESTAMP, F.TASK_INDEX):
        if need not in feats:
            raise _fail(info_path, f"feature '{need}' is missing (every LeRobot v3.0 dataset has it)")
    for key, ft in feats.items():
        if ft["dtype"] not in _DTYPE_TO_ARROW:
            raise _fail(info_path, f"feature '{key}' has dtype {ft['dtype']!r}, which Onshore does not "
                                   f"read (supported: {', '.join(sorted(_DTYPE_TO_ARROW))})")
        if len(ft["shape"]) > 1:
            raise _fail(info_path, f"feature '{key}' has shape {list(ft['shape'])}; only scalars and "
                                   "vectors (one dimension) are supported")
    for key in (F.STATE, F.ACTION):
        ft = feats[key]
        if not ft["dtype"].startswith("float") or len(ft["shape"]) != 1 or ft["shape"][0] < 1:
            raise _fail(info_path, f"feature '{key}' must be a float vector, got dtype "
                                   f"{ft['dtype']!r} shape {list(ft['shape'])}")
    state_names = _names(info, F.STATE, feats[F.STATE]["shape"][0], "state", info_path)
    action_names = _names(info, F.ACTION, feats[F.ACTION]["shape"][0], "action", info_path)

    tasks = _read_tasks(folder)
    eps = _read_episodes(folder)

    # Data files in the order of the episodes that live in them.
    data_path = info.get("data_path", DATA_PATH)
    files: list[tuple[int, int]] = []
    for c, f in zip(eps["data/chunk_index"], eps["data/file_index"], strict=True):
        if not files or files[-1] != (int(c), int(f)):
            if (int(c), int(f)) in files:
                raise _fail(folder / EPISODES_DIR, f"episodes of data file chunk {c} file {f} are "
                                                   "not contiguous in episode order")
            files.append((int(c), int(f)))
    wanted = [k for k in feats if k != INDEX]
    parts: list[pa.Table] = []
    spans: list[tuple[Path, int, int]] = []  # file, first row, end row (for error messages)
    row = 0
    for c, f in files:
        try:
            p = folder / data_path.format(chunk_index=c, file_index=f)
        except (KeyError, IndexError, ValueError) as e:
            raise _fail(info_path, f"field 'data_path' cannot be formatted ({e})") from None
        if not p.is_file():
            raise _fail(p, "missing; the episode metadata says episodes are stored in it")
        try:
            names = pq.read_schema(p).names
            absent = [k for k in wanted if k not in names]
            if absent:
                raise _fail(p, f"column(s) {', '.join(absent)} declared in meta/info.json features "
                               "are missing")
            t = pq.read_table(p, columns=wanted)
        except (OSError, pa.ArrowException) as e:
            raise _fail(p, f"not a readable Parquet file ({e})") from None
        parts.append(t)
        spans.append((p, row, row + t.num_rows))
        row += t.num_rows
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as e:
        raise _fail(folder / "data", f"data files do not share one schema ({e})") from None

    # Frames must match the episode metadata, in order.
    total = int(eps["length"].sum())
    if table.num_rows != total:
        raise _fail(folder / "data", f"data files hold {table.num_rows} frames but the episode "
                                     f"metadata says {total}")
    tf = info.get("total_frames")
    if tf is not None and tf != total:
        raise _fail(info_path, f"field 'total_frames' is {tf} but the episodes hold {total} frames")
    te = info.get("total_episodes")
    if te is not None and te != len(eps["episode_index"]):
        raise _fail(info_path, f"field 'total_episodes' is {te} but the episode metadata lists "
                               f"{len(eps['episode_index'])}")
    ep_col = table.column(F.EPISODE)
    if ep_col.null_count:
        raise _fail(folder / "data", "column 'episode_index' has missing values")
    got = ep_col.to_numpy().astype(np.int64)
    expect = np.repeat(eps["episode_index"], eps["length"])
    if not np.array_equal(got, expect):
        r = int(np.nonzero(got != expect)[0][0])
        p = next(s[0] for s in spans if s[1] <= r < s[2])
        raise _fail(p, f"row {r - next(s[1] for s in spans if s[0] == p)} has episode_index "
                       f"{int(got[r])} but the episode metadata puts episode {int(expect[r])} there")
    ti = table.column(F.TASK_INDEX)
    if ti.null_count:
        raise _fail(folder / "data", "column 'task_index' has missing values")
    ti_np = ti.to_numpy().astype(np.int64)
    if len(ti_np) and (ti_np.min() < 0 or ti_np.max() >= len(tasks)):
        bad = int(ti_np[(ti_np < 0) | (ti_np >= len(tasks))][0])
        raise _fail(folder / TASKS_PATH, f"frames use task_index {bad} but only {len(tasks)} "
                                         "task(s) are listed")

    # Build our frame table: canonical order and types.
    task_text = pa.array(tasks, pa.string()).take(pa.array(ti_np)) if len(tasks) else \
        pa.array([], pa.string())
    cols: dict[str, pa.ChunkedArray | pa.Array] = {}
    for name in _KNOWN_ORDER:
        if name == F.TASK:
            cols[name] = task_text
        elif name in table.column_names:
            col = table.column(name)
            if name in (F.STATE, F.ACTION):
                col = _to_list_type(col, pa.float32())
            try:
                cols[name] = col.cast(F.TYPES[name])
            except pa.ArrowException as e:
                raise _fail(info_path, f"feature '{name}' cannot be read as {F.TYPES[name]} ({e})") \
                    from None
    for name in wanted:
        if name not in cols:
            cols[name] = _to_list_type(table.column(name))
    out = pa.table(cols)
    env_ft = feats.get(ENV_STATE)
    if state_order is not None and env_ft is not None and env_ft["dtype"].startswith("float") \
            and len(env_ft["shape"]) == 1:
        combined = state_names + _names(info, ENV_STATE, env_ft["shape"][0], "environment", info_path)
        if len(set(combined)) == len(combined) and sorted(combined) == sorted(state_order):
            out = _join_environment(out, combined, list(state_order))
            state_names = list(state_order)
    _check_frames(out, lambda r: next(s[0] for s in spans if s[1] <= r < s[2]),
                  {F.STATE: state_names, F.ACTION: action_names}, _fail)

    stats: dict[str, Any] = {}
    sp = folder / STATS_PATH
    if sp.is_file():
        try:
            stats = json.loads(sp.read_text())
        except (OSError, ValueError) as e:
            raise _fail(sp, f"not valid JSON ({e})") from None
        if not isinstance(stats, dict):
            raise _fail(sp, "must hold a JSON object")
    return LeRobotData(table=out, fps=float(info["fps"]), robot_type=info.get("robot_type"),
                       state_names=state_names, action_names=action_names, info=info, tasks=tasks,
                       stats=stats, source=folder)


def _join_environment(table: pa.Table, combined: list[str], order: list[str]) -> pa.Table:
    """``table`` with ``observation.environment_state`` joined into ``observation.state``.

    ``combined`` names the channels of state then environment; the result has them in ``order``.
    """
    n = table.num_rows
    parts = []
    for key in (F.STATE, ENV_STATE):
        col = table.column(key).combine_chunks()
        if col.null_count:
            r = int(np.nonzero(col.is_null().to_numpy(zero_copy_only=False))[0][0])
            raise ValidationError(f"row {r}: column '{key}' is missing")
        width = int(pc.max(pc.list_value_length(col)).as_py() or 0) if n else 0
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if np.any(lengths != width):
            raise ValidationError(f"column '{key}' has vectors of different widths")
        parts.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, width))
    both = np.concatenate(parts, axis=1)
    if both.shape[1] != len(combined):
        raise ValidationError(f"columns '{F.STATE}' and '{ENV_STATE}' hold {both.shape[1]} values per "
                              f"frame but their features name {len(combined)} channels")
    pos = {name: i for i, name in enumerate(combined)}
    values = np.ascontiguousarray(both[:, [pos[name] for name in order]]).reshape(-1)
    state = pa.ListArray.from_arrays(pa.array(np.arange(0, n * len(order) + 1, len(order), dtype=np.int32)),
                                     pa.array(values, pa.float32()))
    table = table.set_column(table.column_names.index(F.STATE), F.STATE, state)
    return table.drop_columns([ENV_STATE])


def _check_frames(table: pa.Table, where, channel_names: dict[str, list[str]], fail) -> None:
    """Refuse NaN/Inf in float columns and wrong vector widths; name file, episode, frame, channel."""
    ep = table.column(F.EPISODE).to_numpy()
    fr = table.column(F.FRAME).to_numpy()
    for name in table.column_names:
        col = table.column(name)
        t = col.type
        is_list = pa.types.is_list(t)
        vt = t.value_type if is_list else t
        if not pa.types.is_floating(vt) and name not in channel_names:
            continue
        if is_list:
            flat = col.combine_chunks()
            lengths = pc.list_value_length(flat).to_numpy(zero_copy_only=False)
            if name in channel_names:
                width = len(channel_names[name])
                if flat.null_count or np.any(lengths != width):
                    r = int(np.nonzero(flat.is_null().to_numpy(zero_copy_only=False)
                                       | (lengths != width))[0][0])
                    n = "missing" if not flat[r].is_valid else f"{lengths[r]} values"
                    raise fail(where(r), f"episode {ep[r]} frame {fr[r]}: column '{name}' has {n}, "
                                         f"expected {width}")
            elif flat.null_count:
                r = int(np.nonzero(flat.is_null().to_numpy(zero_copy_only=False))[0][0])
                raise fail(where(r), f"episode {ep[r]} frame {fr[r]}: column '{name}' is missing")
            if len(flat) == 0:
                continue
            values = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~np.isfinite(values)
            if bad.any():
                k = int(np.nonzero(bad)[0][0])
                offsets = flat.offsets.to_numpy()
                r = int(np.searchsorted(offsets, k, side="right") - 1)
                ch = k - offsets[r]
                names = channel_names.get(name)
                chan = names[ch] if names and ch < len(names) else str(ch)
                raise fail(where(r), f"episode {ep[r]} frame {fr[r]}: column '{name}' channel "
                                     f"{chan!r} is {values[k]} (NaN and Inf are refused)")
        else:
            if col.null_count:
                r = int(np.nonzero(col.is_null().to_numpy())[0][0])
                raise fail(where(r), f"episode {ep[r]} frame {fr[r]}: column '{name}' is missing")
            values = col.to_numpy().astype(np.float64)
            bad = ~np.isfinite(values)
            if bad.any():
                r = int(np.nonzero(bad)[0][0])
                raise fail(where(r), f"episode {ep[r]} frame {fr[r]}: column '{name}' is "
                                     f"{values[r]} (NaN and Inf are refused)")


# --------------------------------------------------------------------------------------------
# embodiment from a dataset


def _safe_name(raw: str | None) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", (raw or "").lower()).strip("-")[:64].strip("-")
    return s or "lerobot"


def _observed_range(data: LeRobotData, key: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    st = data.stats.get(key) if isinstance(data.stats, dict) else None
    if isinstance(st, dict):
        try:
            lo = np.asarray(st["min"], dtype=np.float64).reshape(-1)
            hi = np.asarray(st["max"], dtype=np.float64).reshape(-1)
            if lo.shape == (width,) and hi.shape == (width,) and np.all(np.isfinite(lo)) \
                    and np.all(np.isfinite(hi)) and np.all(lo <= hi):
                return lo, hi
        except (KeyError, TypeError, ValueError):
            pass
    col = data.table.column(key).combine_chunks()
    if len(col) == 0:
        return np.full(width, -1.0), np.full(width, 1.0)
    values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    return values.min(axis=0).astype(np.float64), values.max(axis=0).astype(np.float64)


def _limits(lo: float, hi: float) -> tuple[float, float]:
    span = hi - lo
    margin = LIMIT_MARGIN * span if span > 0 else max(LIMIT_MARGIN * abs(lo), 1e-3)
    return float(lo - margin), float(hi + margin)


def embodiment_from_lerobot(data: LeRobotData, name: str | None = None) -> Embodiment:
    """Guess an embodiment spec from a dataset that came without one.

    Channel names are the feature ``names`` (``state_0``... where none are given); units are the
    feature's ``units`` where it has one string per name (Onshore's exports write them), else left
    empty (LeRobot itself does not record them); ``control_hz`` is the dataset's fps. Limits are the
    observed range of each channel (``meta/stats.json`` min/max, or the frames themselves when
    the stats are missing or do not fit), widened on each side by 5% of that range (by 5% of the
    value, at least 0.001, for a channel that never moved), so that the data lies strictly inside
    its own envelope. No ``max_rate`` is set. These limits describe the data, not the machine:
    review them before the spec guards a real machine. ``name`` defaults to the dataset's
    ``robot_type`` made into a valid name ("so101_follower" -> "so101-follower").
    """
    ename = check_name(name, "embodiment") if name is not None else _safe_name(data.robot_type)

    def channels(key: str, names: list[str]) -> tuple[Channel, ...]:
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValidationError(f"{data.source or 'dataset'}: feature '{key}' repeats the channel "
                                  f"name {dup!r}; channel names must be unique")
        lo, hi = _observed_range(data, key, len(names))
        units = data.info["features"][key].get("units")
        if not (isinstance(units, list) and len(units) == len(names) and all(isinstance(u, str) for u in units)):
            units = [""] * len(names)
        return tuple(Channel(n, u, *_limits(float(a), float(b)))
                     for n, u, a, b in zip(names, units, lo, hi, strict=True))

    src = f" {data.source}" if data.source else ""
    return Embodiment(
        name=ename, control_hz=float(data.fps),
        state=channels(F.STATE, data.state_names), action=channels(F.ACTION, data.action_names),
        description=(f"derived from LeRobot dataset{src}; limits are the observed range widened by "
                     f"{LIMIT_MARGIN:.0%} on each side, units unknown"),
    )


# --------------------------------------------------------------------------------------------
# writing


def _feature_of(name: str, t: pa.DataType, col: pa.ChunkedArray) -> tuple[dict[str, Any], pa.DataType]:
    """LeRobot feature entry and the Arrow type to store for an extra column."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        vt = t.value_type
        if vt not in _ARROW_TO_DTYPE or _ARROW_TO_DTYPE[vt] == "string":
            raise ValidationError(f"column '{name}' is a list of {vt}; LeRobot vectors must hold "
                                  "numbers or booleans")
        lengths = np.unique(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        if col.null_count or len(lengths) > 1:
            raise ValidationError(f"column '{name}' has lists of different lengths or missing lists; "
                                  "LeRobot vectors have one fixed width")
        width = int(lengths[0]) if len(lengths) else 0
        return ({"dtype": _ARROW_TO_DTYPE[vt], "shape": [width], "names": None},
                pa.list_(vt, width))
    if t not in _ARROW_TO_DTYPE:
        raise ValidationError(f"column '{name}' has type {t}, which LeRobot cannot declare; cast it to "
                              "a number, boolean, string or fixed-width list first")
    if _ARROW_TO_DTYPE[t] != "string" and col.null_count:
        raise ValidationError(f"column '{name}' has missing values; LeRobot numeric features have a "
                              "value in every frame")
    return {"dtype": _ARROW_TO_DTYPE[t], "shape": [1], "names": None}, \
        (pa.string() if t == pa.large_string() else t)


def _stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot-style statistics of ``values`` (frames x channels), in float64."""
    v = values.astype(np.float64, copy=False)
    n = v.shape[0]
    out: dict[str, list] = {
        "min": v.min(axis=0).tolist(), "max": v.max(axis=0).tolist(),
        "mean": v.mean(axis=0).tolist(), "std": v.std(axis=0).tolist(), "count": [int(n)],
    }
    qs = np.quantile(v, QUANTILES, axis=0) if n >= 2 else np.repeat(v.mean(axis=0)[None], len(QUANTILES), 0)
    for q, row in zip(QUANTILES, qs, strict=True):
        out[f"q{round(q * 100):02d}"] = row.tolist()
    return out


def _numeric_matrix(col: pa.ChunkedArray | pa.Array, ft: dict[str, Any]) -> np.ndarray | None:
    if ft["dtype"] == "string":
        return None
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        width = ft["shape"][0]
        return col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(col), width)
    return col.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(col), 1)


def environment_channels(embodiment: Embodiment) -> list[int]:
    """Indices of the state channels that describe the environment, in the embodiment's order.

    They are the channels of the groups named in ``extra.environment_groups`` (each a key of
    ``extra.groups``); none when the embodiment names no such groups. Refused (``ValidationError``
    naming the embodiment and field): a malformed list, an unknown group or channel, or groups
    that take every state channel (LeRobot's ``observation.state`` is the robot's own and must
    keep at least one).
    """
    extra = embodiment.extra or {}
    wanted = extra.get(ENVIRONMENT_GROUPS)
    if wanted is None:
        return []
    where = f"embodiment {embodiment.name!r}: field 'extra.{ENVIRONMENT_GROUPS}'"
    groups = extra.get("groups")
    if not isinstance(wanted, list) or not all(isinstance(g, str) for g in wanted):
        raise ValidationError(f"{where} must be a list of group names (keys of 'extra.groups')")
    if not isinstance(groups, dict):
        raise ValidationError(f"{where} names groups but the embodiment has no 'extra.groups' table")
    index = {c.name: i for i, c in enumerate(embodiment.state)}
    picked: set[int] = set()
    for g in wanted:
        chans = groups.get(g)
        if not isinstance(chans, list):
            raise ValidationError(f"{where} names group {g!r}, which 'extra.groups' does not have "
                                  f"(groups: {', '.join(sorted(groups))})")
        for c in chans:
            if c not in index:
                raise ValidationError(f"embodiment {embodiment.name!r}: group {g!r} names channel {c!r}, "
                                      "which is not a state channel")
            picked.add(index[c])
    if len(picked) == len(embodiment.state):
        raise ValidationError(f"{where} takes every state channel; leave the robot's own channels "
                              "(LeRobot's observation.state) out of it")
    return sorted(picked)


def lerobot_fps(control_hz: float) -> int | float:
    """LeRobot's ``fps``: an integer when the rate is whole (float noise such as 80.00000000001
    included, so that ``aggregate_datasets``, which compares fps exactly, merges equal rates)."""
    hz = float(control_hz)
    near = round(hz)
    return int(near) if near >= 1 and abs(hz - near) <= 1e-9 * hz else hz


def _prepare(table: pa.Table, embodiment: Embodiment) -> tuple[pa.Table, dict[str, dict], list[str]]:
    """Validate and convert ``table`` to the stored data layout; return it, features and tasks."""
    missing = [c for c in F.REQUIRED if c not in table.column_names]
    if missing:
        raise ValidationError(f"frame table lacks column(s) {', '.join(missing)}")
    if INDEX in table.column_names:
        raise ValidationError("frame table has a column 'index', a name LeRobot reserves for the "
                              "global frame index; rename it")
    env = environment_channels(embodiment)
    if env and ENV_STATE in table.column_names:
        raise ValidationError(f"frame table has a column '{ENV_STATE}' but embodiment "
                              f"{embodiment.name!r} fills that feature from its environment groups; "
                              "rename the column")
    n = table.num_rows
    if n == 0:
        raise ValidationError("frame table has no frames; there is nothing to export")
    cols: dict[str, pa.ChunkedArray] = {}
    for name in table.column_names:
        col = table.column(name)
        if name in F.TYPES:
            try:
                col = col.cast(F.TYPES[name])
            except pa.ArrowException as e:
                raise ValidationError(f"column '{name}' cannot be cast to {F.TYPES[name]} ({e})") from None
        cols[name] = col
    for name in (F.EPISODE, F.FRAME, F.TIMESTAMP, F.TASK, F.TASK_INDEX, F.REWARD, F.DONE, F.SUCCESS):
        if name in cols and cols[name].null_count:
            r = int(np.nonzero(cols[name].is_null().to_numpy(zero_copy_only=False))[0][0])
            raise ValidationError(f"row {r}: column '{name}' is missing a value")
    checked = pa.table(cols)
    _check_frames(checked, lambda r: "frame table",
                  {F.STATE: [c.name for c in embodiment.state],
                   F.ACTION: [c.name for c in embodiment.action]},
                  lambda w, m: ValidationError(f"{w}: {m}"))

    # Episodes contiguous, numbered 0..N-1 in row order; frames 0..len-1 within each.
    ep = cols[F.EPISODE].to_numpy()
    fr = cols[F.FRAME].to_numpy()
    starts = np.concatenate(([0], np.nonzero(np.diff(ep))[0] + 1))
    ids = ep[starts]
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValidationError(
            "LeRobot v3.0 numbers episodes 0..N-1 with each episode's frames together and in that "
            f"order; this table has episodes in the order {ids[:10].tolist()}"
            f"{' ...' if len(ids) > 10 else ''}; sort by episode_index and renumber first")
    lengths = np.diff(np.append(starts, n))
    expected_fr = np.arange(n) - np.repeat(starts, lengths)
    if not np.array_equal(fr, expected_fr):
        r = int(np.nonzero(fr != expected_fr)[0][0])
        raise ValidationError(f"episode {ep[r]}: row {r} has frame_index {fr[r]} where "
                              f"{expected_fr[r]} is expected; frames must be numbered 0..len-1 in order")

    # Tasks.
    if F.TASK in cols:
        if F.TASK_INDEX in cols:
            pairs = pa.table({"i": cols[F.TASK_INDEX], "s": cols[F.TASK]}).group_by(
                ["i", "s"], use_threads=False).aggregate([])
            idx, text = pairs.column("i").to_pylist(), pairs.column("s").to_pylist()
            by_index: dict[int, str] = {}
            for i, s in zip(idx, text, strict=True):
                if by_index.setdefault(i, s) != s:
                    raise ValidationError(f"task_index {i} is used for two tasks: {by_index[i]!r} and {s!r}")
            if len(set(by_index.values())) != len(by_index):
                raise ValidationError("one task text has more than one task_index; give each task one")
            if sorted(by_index) != list(range(len(by_index))):
                raise ValidationError(f"task_index values must be 0..{len(by_index) - 1} (LeRobot looks "
                                      f"tasks up by position), got {sorted(by_index)}")
            tasks = [by_index[i] for i in range(len(by_index))]
        else:
            tasks = pc.unique(cols[F.TASK]).to_pylist()  # in order of first appearance
            cols[F.TASK_INDEX] = pc.index_in(cols[F.TASK], value_set=pa.array(tasks, pa.string())) \
                .cast(pa.int64())
    else:
        if F.TASK_INDEX in cols:
            raise ValidationError("frame table has 'task_index' but no 'task' text; add the task "
                                  "column so that meta/tasks.parquet can say what each index means")
        tasks = [""]
        cols[F.TASK_INDEX] = pa.chunked_array([pa.array(np.zeros(n, np.int64))])

    # Features: ours first, extras, then LeRobot's own index columns.
    features: dict[str, dict[str, Any]] = {}
    stored: dict[str, pa.ChunkedArray] = {}
    robot = sorted(set(range(len(embodiment.state))) - set(env))
    state = cols[F.STATE].cast(pa.list_(pa.float32())).combine_chunks()
    state_np = state.flatten().to_numpy(zero_copy_only=False).reshape(n, len(embodiment.state))
    parts = [(F.STATE, robot), (ENV_STATE, env)] if env else [(F.STATE, robot)]
    for key, idx in parts:
        chans = [embodiment.state[i] for i in idx]
        features[key] = {"dtype": "float32", "shape": [len(chans)], "names": [c.name for c in chans],
                         "units": [c.unit for c in chans]}
        values = pa.array(np.ascontiguousarray(state_np[:, idx]).reshape(-1), pa.float32())
        stored[key] = pa.chunked_array([pa.FixedSizeListArray.from_arrays(values, len(chans))])
    features[F.ACTION] = {"dtype": "float32", "shape": [len(embodiment.action)],
                          "names": [c.name for c in embodiment.action],
                          "units": [c.unit for c in embodiment.action]}
    stored[F.ACTION] = cols[F.ACTION].cast(pa.list_(pa.float32(), len(embodiment.action)))
    for key, dtype in ((F.REWARD, "float32"), (F.DONE, "bool"), (F.SUCCESS, "bool")):
        if key in cols:
            features[key] = {"dtype": dtype, "shape": [1], "names": None}
            stored[key] = cols[key]
    for key in table.column_names:
        if key in F.TYPES:
            continue
        features[key], t = _feature_of(key, cols[key].type, cols[key])
        stored[key] = cols[key].cast(t)
    features[F.TIMESTAMP] = {"dtype": "float32", "shape": [1], "names": None}
    stored[F.TIMESTAMP] = cols[F.TIMESTAMP].cast(pa.float32())
    for key in _LEROBOT_INDEX_COLUMNS:
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
        stored[key] = pa.chunked_array([pa.array(np.arange(n, dtype=np.int64))]) if key == INDEX \
            else cols[key]
    return pa.table(stored), features, tasks


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet: column task_index and the task text as the pandas index 'task'."""
    pandas_meta = {
        "index_columns": [F.TASK],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": F.TASK_INDEX, "field_name": F.TASK_INDEX, "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": F.TASK, "field_name": F.TASK, "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([pa.field(F.TASK_INDEX, pa.int64()), pa.field(F.TASK, pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table([pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.string())],
                    schema=schema)


def write_lerobot_v3(table: pa.Table, embodiment: Embodiment, out: Path, *,
                     robot_type: str | None = None, chunks_size: int = 1000,
                     data_file_size_mb: float = 100, provenance: dict[str, Any] | None = None,
                     card: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Write ``table`` (our frame schema) as a complete LeRobotDataset v3.0 folder at ``out``.

    ``out`` must not exist or be an empty folder. Feature names are the embodiment's channel
    names, ``fps`` its ``control_hz`` (an integer when it is whole), ``robot_type`` defaults to
    the embodiment's name. Extra columns are kept as features. State is split into
    ``observation.state`` and ``observation.environment_state`` by the embodiment's environment
    groups (``environment_channels``). ``provenance`` (see ``telemetry/provenance.py``) goes into
    ``meta/info.json``, every data file's Parquet metadata and a column of the episode metadata;
    ``card(info)`` (given ``meta/info.json`` as written) into ``README.md``. Raises
    ``ValidationError`` before writing anything if the table does not fit (see the module
    docstring).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationError(f"{out}: already exists and is not an empty folder; choose a new folder "
                              "(Onshore never writes over an existing dataset)")
    if isinstance(chunks_size, bool) or not isinstance(chunks_size, int) or chunks_size < 1:
        raise ValidationError(f"chunks_size must be a positive integer, got {chunks_size!r}")
    if isinstance(data_file_size_mb, bool) or not isinstance(data_file_size_mb, int | float) \
            or not data_file_size_mb > 0:
        raise ValidationError(f"data_file_size_mb must be a positive number, got {data_file_size_mb!r}")

    data, features, tasks = _prepare(table, embodiment)
    if provenance is not None:
        data = with_provenance(data, provenance)
    n = data.num_rows
    ep = data.column(F.EPISODE).to_numpy()
    starts = np.concatenate(([0], np.nonzero(np.diff(ep))[0] + 1))
    ends = np.append(starts[1:], n)
    task_idx = data.column(F.TASK_INDEX).to_numpy()

    # Assign episodes to files by estimated size.
    limit = data_file_size_mb * 1024 * 1024
    placement: list[tuple[int, int]] = []
    chunk = file = 0
    used = 0
    for s, e in zip(starts, ends, strict=True):
        size = data.slice(s, e - s).nbytes
        if used and used + size >= limit:
            file += 1
            if file == chunks_size:
                chunk, file = chunk + 1, 0
            used = 0
        placement.append((chunk, file))
        used += size

    # Statistics, per episode and over everything.
    matrices = {k: _numeric_matrix(data.column(k), ft) for k, ft in features.items()}
    matrices = {k: m for k, m in matrices.items() if m is not None}
    dataset_stats = {k: _stats(m) for k, m in matrices.items()}
    ep_rows: dict[str, list] = {c: [] for c in ("episode_index", "tasks", "length", "data/chunk_index",
                                                "data/file_index", "dataset_from_index",
                                                "dataset_to_index")}
    stat_cols: dict[str, list] = {}
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        ep_rows["episode_index"].append(i)
        ep_rows["tasks"].append([tasks[j] for j in dict.fromkeys(task_idx[s:e].tolist())])
        ep_rows["length"].append(int(e - s))
        ep_rows["data/chunk_index"].append(placement[i][0])
        ep_rows["data/file_index"].append(placement[i][1])
        ep_rows["dataset_from_index"].append(int(s))
        ep_rows["dataset_to_index"].append(int(e))
        for k, m in matrices.items():
            for stat, v in _stats(m[s:e]).items():
                stat_cols.setdefault(f"stats/{k}/{stat}", []).append(v)
    ep_types = {"tasks": pa.list_(pa.string())}
    episodes = {c: pa.array(v, ep_types.get(c, pa.int64())) for c, v in ep_rows.items()}
    for c, v in stat_cols.items():
        episodes[c] = pa.array(v, pa.list_(pa.int64() if c.endswith("/count") else pa.float64()))
    n_eps = len(starts)
    if provenance is not None:
        block = json.dumps(provenance, sort_keys=True)
        episodes[PROVENANCE_EPISODE_COLUMN] = pa.array([block] * n_eps, pa.string())
    episodes["meta/episodes/chunk_index"] = pa.array(np.zeros(n_eps, np.int64))
    episodes["meta/episodes/file_index"] = pa.array(np.zeros(n_eps, np.int64))

    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type if robot_type is not None else embodiment.name,
        "total_episodes": n_eps,
        "total_frames": n,
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_file_size_mb,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_MB,
        "fps": lerobot_fps(embodiment.control_hz),
        "splits": {"train": f"0:{n_eps}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }
    if provenance is not None:
        info[PROVENANCE_INFO_KEY] = provenance

    # Assemble next to `out`, then move into place.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        (tmp / "meta").mkdir()
        (tmp / INFO_PATH).write_text(json.dumps(info, indent=4) + "\n")
        (tmp / STATS_PATH).write_text(json.dumps(dataset_stats, indent=4) + "\n")
        pq.write_table(_tasks_table(tasks), tmp / TASKS_PATH)
        if card is not None:
            (tmp / CARD_PATH).write_text(card(info))
        ep_path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True)
        pq.write_table(pa.table(episodes), ep_path, compression="snappy")
        writer: pq.ParquetWriter | None = None
        current: tuple[int, int] | None = None
        try:
            for (s, e), where in zip(zip(starts, ends, strict=True), placement, strict=True):
                if where != current:
                    if writer is not None:
                        writer.close()
                    p = tmp / DATA_PATH.format(chunk_index=where[0], file_index=where[1])
                    p.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(p, data.schema, compression="snappy")
                    current = where
                assert writer is not None
                writer.write_table(data.slice(s, e - s))  # one row group per episode
        finally:
            if writer is not None:
                writer.close()
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
