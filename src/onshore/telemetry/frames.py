"""The frame schema: one row per control step, columns named as in LeRobotDataset v3.0.

Required: ``episode_index`` (int64), ``frame_index`` (int64), ``timestamp`` (float64 seconds since
the episode began), ``observation.state`` (list<float32>, one per state channel), ``action``
(list<float32>, one per action channel). Optional: ``task`` (string, the plain-text
instruction), ``task_index`` (int64), ``next.reward`` (float32), ``next.done`` (bool),
``next.success`` (bool), and any extra per-frame column a simulator adds (e.g. ``fault``).
"""

from __future__ import annotations

import pyarrow as pa

EPISODE = "episode_index"
FRAME = "frame_index"
TIMESTAMP = "timestamp"
STATE = "observation.state"
ACTION = "action"
TASK = "task"
TASK_INDEX = "task_index"
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"

REQUIRED = (EPISODE, FRAME, TIMESTAMP, STATE, ACTION)

#: Canonical Arrow type of each known column; ingest casts to these.
TYPES: dict[str, pa.DataType] = {
    EPISODE: pa.int64(),
    FRAME: pa.int64(),
    TIMESTAMP: pa.float64(),
    STATE: pa.list_(pa.float32()),
    ACTION: pa.list_(pa.float32()),
    TASK: pa.string(),
    TASK_INDEX: pa.int64(),
    REWARD: pa.float32(),
    DONE: pa.bool_(),
    SUCCESS: pa.bool_(),
}


def frame_schema(extra: dict[str, pa.DataType] | None = None, task: bool = True) -> pa.Schema:
    """The Arrow schema of a frame table with the optional columns and any ``extra`` ones."""
    names = list(REQUIRED) + ([TASK] if task else []) + [REWARD, DONE, SUCCESS]
    fields = [pa.field(n, TYPES[n]) for n in names]
    fields += [pa.field(n, t) for n, t in (extra or {}).items()]
    return pa.schema(fields)
