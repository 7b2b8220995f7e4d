"""Telemetry is held to the embodiment's promise: limits, timestamps, and specs without unknown keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import EMBODIMENT_TOML, make_frames, write_frames
from onshore.cli.app import main
from onshore.errors import ValidationError
from onshore.telemetry.embodiment import Embodiment
from onshore.telemetry.validate import FrameValidator, TelemetryError, validate_frames
from onshore.workspace import Workspace, datasets


def _set(table: pa.Table, column: str, row: int, channel: int, value: float) -> pa.Table:
    values = np.array(table.column(column).to_pylist(), dtype=np.float32)
    values[row, channel] = value
    return table.set_column(table.column_names.index(column), column,
                            pa.array(list(values), type=pa.list_(pa.float32())))


def _ingest(ws: Workspace, tmp: Path, policy: Path, table: pa.Table, allow: bool = False):  # type: ignore[no-untyped-def]
    f = write_frames(tmp / "in.parquet", table)
    return datasets.ingest(ws, "furnace", "steelco", "sakai", policy, "furnace-line-3", [f],
                           allow_out_of_limits=allow)


def test_state_outside_its_limits_is_refused_with_value_and_limit(ws: Workspace, tmp_path: Path,
                                                                   policy_file: Path) -> None:
    table = _set(make_frames(), "observation.state", 57, 2, 999.0)  # o2_percent: 0..25
    with pytest.raises(TelemetryError) as err:
        _ingest(ws, tmp_path, policy_file, table)
    msg = str(err.value)
    assert "in.parquet: episode 1, frame 7: 'observation.state' channel 'o2_percent' is 999 percent" in msg
    assert "outside its limits 0..25 percent" in msg and "--allow-out-of-limits" in msg
    assert datasets.list_datasets(ws) == []


def test_allow_out_of_limits_keeps_state_and_records_the_count(ws: Workspace, tmp_path: Path,
                                                               policy_file: Path) -> None:
    table = _set(_set(make_frames(), "observation.state", 57, 2, 999.0), "observation.state", 3, 0, -5.0)
    result = _ingest(ws, tmp_path, policy_file, table, allow=True)
    assert result.frames == 200 and result.out_of_limits == 2
    entry = next(e.entry for e in ws.ledger.entries(0, None, ["data.ingest"]))
    assert entry.body["state_out_of_limits"] == 2


def test_action_outside_its_limits_is_always_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    table = _set(make_frames(), "action", 10, 1, 1e9)  # air_damper: 0..100
    with pytest.raises(TelemetryError, match="'action' channel 'air_damper' is 1e\\+09 percent, outside its "
                                             "limits 0..100 percent.*always refused"):
        _ingest(ws, tmp_path, policy_file, table, allow=True)


def test_negative_timestamp_is_refused() -> None:
    emb = Embodiment.from_dict(__import__("tomllib").loads(EMBODIMENT_TOML))
    t = make_frames()
    ts = t.column("timestamp").to_numpy() - 1.0
    t = t.set_column(t.column_names.index("timestamp"), "timestamp", pa.array(ts))
    with pytest.raises(TelemetryError, match="episode 0, frame 0: timestamp -1.0 is negative"):
        validate_frames(t, emb, "neg.parquet")


def test_timestamps_written_as_text_are_refused() -> None:
    emb = Embodiment.from_dict(__import__("tomllib").loads(EMBODIMENT_TOML))
    t = make_frames()
    t = t.set_column(t.column_names.index("timestamp"), "timestamp",
                     pa.array([str(x) for x in t.column("timestamp").to_pylist()]))
    with pytest.raises(TelemetryError, match="text.ps.parquet: column 'timestamp' holds text"):
        validate_frames(t, emb, "text.ps.parquet")


@pytest.mark.parametrize("edit,message", [
    (lambda s: 'colour = "red"\n' + s, "unknown field(s) ['colour']"),
    (lambda s: s.replace("high = 25.0", "high = 25.0\nlimit_hi = 30.0"), "[[state]] #3: unknown field(s) ['limit_hi']"),
])
def test_unknown_embodiment_keys_are_refused(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    import tomllib

    with pytest.raises(ValidationError) as err:
        Embodiment.from_dict(tomllib.loads(edit(EMBODIMENT_TOML)), "emb.toml")
    assert message in str(err.value)


def test_validator_carries_order_across_batches() -> None:
    emb = Embodiment.from_dict(__import__("tomllib").loads(EMBODIMENT_TOML))
    t = make_frames(episodes=2, frames=10)
    v = FrameValidator(emb, "stream.parquet")
    v.feed(t.slice(0, 5))
    with pytest.raises(TelemetryError, match="episode 0, frame 4: this frame appears twice"):
        v.feed(t.slice(4, 5))


def test_cli_flag_reaches_the_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "ws"
    (tmp_path / "emb.toml").write_text(EMBODIMENT_TOML)
    from conftest import POLICY_JP
    (tmp_path / "policy.toml").write_text(POLICY_JP)
    for args in (["init", str(w), "--name", "x"],
                 ["-w", str(w), "site", "add", "sakai", "--jurisdiction", "JP", "--roles", "storage"],
                 ["-w", str(w), "member", "add", "steelco"],
                 ["-w", str(w), "embodiment", "add", str(tmp_path / "emb.toml")]):
        assert main(args) == 0
    f = write_frames(tmp_path / "hot.parquet", _set(make_frames(), "observation.state", 0, 2, 30.0))
    ingest = ["-w", str(w), "dataset", "ingest", "furnace", str(f), "--member", "steelco", "--site", "sakai",
              "--policy", str(tmp_path / "policy.toml"), "--embodiment", "furnace-line-3"]
    capsys.readouterr()
    assert main(ingest) == 1
    assert "outside its limits" in capsys.readouterr().err
    assert main([*ingest, "--allow-out-of-limits", "--json"]) == 0
    assert '"state_out_of_limits": 1' in capsys.readouterr().out
