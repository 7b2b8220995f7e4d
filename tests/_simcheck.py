"""Shared checks for generated telemetry files (used by the simulator tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onshore.telemetry.embodiment import Embodiment
from onshore.telemetry.frames import frame_schema


def check_generated(out: Path, embodiment: str,
                    extra: dict[str, pa.DataType] | None = None) -> tuple[pa.Table, Embodiment]:
    """Assert the frame schema, finiteness, widths and time order; return the table and spec."""
    emb = Embodiment.from_toml(out / f"{embodiment}.toml")
    files = sorted(out.glob("frames-*.parquet"))
    assert files, "no frame files written"
    assert not list(out.glob("*.partial"))
    table = pa.concat_tables(pq.read_table(f) for f in files)
    assert table.schema.equals(frame_schema(extra)), table.schema
    state = np.array(table.column("observation.state").to_pylist(), dtype=np.float64)
    action = np.array(table.column("action").to_pylist(), dtype=np.float64)
    assert state.shape[1] == emb.state_dim and action.shape[1] == emb.action_dim
    for name in ("timestamp", "next.reward"):
        assert np.isfinite(table.column(name).to_numpy()).all()
    assert np.isfinite(state).all() and np.isfinite(action).all()
    a_low = np.array([c.low for c in emb.action])
    a_high = np.array([c.high for c in emb.action])
    assert (action >= a_low - 1e-6).all() and (action <= a_high + 1e-6).all()
    ep = table.column("episode_index").to_numpy()
    fr = table.column("frame_index").to_numpy()
    ts = table.column("timestamp").to_numpy()
    done = table.column("next.done").to_numpy(zero_copy_only=False)
    assert (np.diff(ep) >= 0).all(), "episodes out of order"
    for e in np.unique(ep):
        m = ep == e
        assert (fr[m] == np.arange(m.sum())).all()
        assert (np.diff(ts[m]) > 0).all(), f"timestamps do not increase in episode {e}"
        assert ts[m][0] == 0.0
        assert done[m][-1] and not done[m][:-1].any()
    sidecar = json.loads((out / "generate.json").read_text())
    assert sidecar["frames"] == table.num_rows
    return table, emb
