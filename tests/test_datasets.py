"""Resident storage end to end: ingest, read, copy, withdraw, with real keys, files and SQLite."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from conftest import make_frames, write_frames
from onshore.catalog import schema as T
from onshore.errors import IntegrityError, NotFoundError, OnshoreError, PolicyDenied, ValidationError
from onshore.store import shards as S
from onshore.telemetry.validate import TelemetryError
from onshore.workspace import Workspace, datasets, registry


def _catalog_rows(ws: Workspace, table) -> list:  # type: ignore[no-untyped-def]
    with ws.catalog.connect() as conn:
        return conn.execute(select(table)).all()


def _ingest(ws: Workspace, tmp: Path, policy: Path, name: str = "furnace", site: str = "sakai",
            files: list[Path] | None = None):  # type: ignore[no-untyped-def]
    files = files or [write_frames(tmp / f"{name}.parquet")]
    return datasets.ingest(ws, name, "steelco", site, policy, "furnace-line-3", files)


def test_ingest_then_read_gives_back_the_frames(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    src = make_frames(episodes=3, frames=40)
    f = write_frames(tmp_path / "in.parquet", src)
    result = _ingest(ws, tmp_path, policy_file, files=[f])
    assert result.episodes == 3 and result.frames == 120
    table = datasets.read(ws, "furnace", "sakai")
    for col in ("episode_index", "frame_index", "timestamp", "observation.state", "action", "task"):
        assert table.column(col).to_pylist() == src.column(col).to_pylist()
    batches = list(datasets.iter_batches(ws, "furnace", "sakai"))
    assert sum(b.num_rows for b in batches) == 120


def test_shard_bytes_are_unreadable_without_the_key_service(ws: Workspace, tmp_path: Path,
                                                            policy_file: Path) -> None:
    result = _ingest(ws, tmp_path, policy_file)
    shard = Path(registry.get_site(ws, "sakai").root) / result.shards[0].path
    with pytest.raises(OSError):
        pq.read_table(shard)
    # the plaintext values do not appear in the file
    raw = shard.read_bytes()
    assert b"keep zone temperatures" not in raw
    # content addressed: the file name is the SHA-256 of its bytes, recorded in catalog and ledger
    import hashlib

    assert shard.stem == hashlib.sha256(raw).hexdigest() == result.shards[0].sha256
    ingest_entry = next(e for e in ws.ledger.entries() if e.entry.kind == "data.ingest")
    assert ingest_entry.entry.body["shards"][0]["sha256"] == result.shards[0].sha256


def test_key_files_are_private(ws: Workspace) -> None:
    for path in (ws.root / "sites" / "sakai" / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (ws.root / "members" / "steelco" / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_copy_inside_policy_rewraps_for_target(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    out = datasets.copy(ws, "furnace", "tokyo")
    assert out["from"] == "sakai" and out["to"] == "tokyo"
    wraps = {r.site for r in _catalog_rows(ws, T.key_wraps)}
    assert wraps == {"sakai", "tokyo"}
    assert datasets.read(ws, "furnace", "tokyo").num_rows == 200
    kinds = [e.entry.kind for e in ws.ledger.entries()]
    assert "data.copy" in kinds and "key.release" in kinds


def test_copy_outside_policy_is_refused_and_recorded(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    ohio_root = Path(registry.get_site(ws, "ohio").root)
    before = ws.ledger.size()
    with pytest.raises(PolicyDenied) as err:
        datasets.copy(ws, "furnace", "ohio")
    assert "dataset/furnace/jurisdictions" in err.value.rules
    assert "ohio" in str(err.value) and "US" in str(err.value)
    assert not list(ohio_root.rglob("*.parquet"))
    assert {r.site for r in _catalog_rows(ws, T.key_wraps)} == {"sakai"}
    # exactly one new entry: the deny decision, with the policy set hash
    new = list(ws.ledger.entries(before))
    assert [e.entry.kind for e in new] == ["decision"]
    assert new[0].entry.body["decision"] == "deny"
    assert new[0].entry.body["policy_hash"] == ws.pdp().policy_hash


def test_read_at_a_site_without_the_data_is_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    with pytest.raises(OnshoreError, match="no shards at site 'tokyo'"):
        datasets.read(ws, "furnace", "tokyo")
    with pytest.raises(PolicyDenied):
        datasets.read(ws, "furnace", "ohio")


def test_ingest_outside_policy_is_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    with pytest.raises(PolicyDenied) as err:
        _ingest(ws, tmp_path, policy_file, site="ohio")
    assert "dataset/furnace/jurisdictions" in err.value.rules
    assert _catalog_rows(ws, T.datasets) == [] and _catalog_rows(ws, T.shards) == []


def test_ingest_with_expired_policy_is_refused(ws: Workspace, tmp_path: Path) -> None:
    p = tmp_path / "old.toml"
    p.write_text('jurisdictions = ["JP"]\npurposes = ["fine-tuning"]\nexpires = 2020-01-01\n')
    with pytest.raises(PolicyDenied) as err:
        _ingest(ws, tmp_path, p)
    assert err.value.rules == ["dataset/furnace/expiry"]


def test_policy_naming_a_site_outside_its_jurisdictions_is_refused(ws: Workspace, tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('jurisdictions = ["JP"]\nsites = ["ohio"]\npurposes = ["fine-tuning"]\nexpires = 2031-01-01\n')
    with pytest.raises(ValidationError, match="ohio.*US"):
        _ingest(ws, tmp_path, p)


def test_policy_with_named_sites_limits_copies(ws: Workspace, tmp_path: Path) -> None:
    p = tmp_path / "sakai-only.toml"
    p.write_text('jurisdictions = ["JP"]\nsites = ["sakai"]\npurposes = ["fine-tuning"]\nexpires = 2031-01-01\n')
    _ingest(ws, tmp_path, p)
    with pytest.raises(PolicyDenied) as err:
        datasets.copy(ws, "furnace", "tokyo")
    assert err.value.rules == ["dataset/furnace/sites"]


def test_purpose_not_allowed_is_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    with pytest.raises(PolicyDenied) as err:
        datasets.read(ws, "furnace", "sakai", purpose="advertising")
    assert err.value.rules == ["dataset/furnace/purposes"]
    assert datasets.read(ws, "furnace", "sakai", purpose="fine-tuning").num_rows == 200


@pytest.mark.parametrize("name", ["Furnace", "a/b", "..", "", "with space", "x" * 65, "-lead"])
def test_bad_dataset_names_are_refused(ws: Workspace, tmp_path: Path, policy_file: Path, name: str) -> None:
    with pytest.raises(ValidationError, match="invalid dataset name"):
        _ingest(ws, tmp_path, policy_file, name=name, files=[write_frames(tmp_path / "f.parquet")])
    assert _catalog_rows(ws, T.datasets) == []


def _bad(table: pa.Table, column: str, row: int, channel: int, value: float) -> pa.Table:
    values = np.array(table.column(column).to_pylist(), dtype=np.float32)
    values[row, channel] = value
    idx = table.column_names.index(column)
    return table.set_column(idx, column, pa.array(list(values), type=pa.list_(pa.float32())))


@pytest.mark.parametrize("mutate,message", [
    (lambda t: _bad(t, "observation.state", 57, 1, float("nan")),
     "episode 1, frame 7: 'observation.state' channel 'zone2_temp' is nan"),
    (lambda t: _bad(t, "action", 3, 0, float("inf")), "episode 0, frame 3: 'action' channel 'fuel_valve' is inf"),
    (lambda t: make_frames(state_dim=4), "'observation.state' has 4 values but embodiment 'furnace-line-3' has 3"),
    (lambda t: t.set_column(2, "timestamp", pa.array([0.0] * t.num_rows)),
     "episode 0, frame 1: timestamp 0.0 does not increase"),
    (lambda t: t.drop_columns(["action"]), "missing column(s) ['action']"),
])
def test_bad_telemetry_is_refused_with_its_location(ws: Workspace, tmp_path: Path, policy_file: Path,
                                                    mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    f = write_frames(tmp_path / "bad.parquet", mutate(make_frames()))
    with pytest.raises(TelemetryError) as err:
        _ingest(ws, tmp_path, policy_file, files=[f])
    assert str(f) in str(err.value) and message in str(err.value)
    assert _catalog_rows(ws, T.datasets) == [] and _catalog_rows(ws, T.shards) == []
    assert not list(Path(registry.get_site(ws, "sakai").root).rglob("*.parquet"))


def test_unknown_embodiment_is_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    with pytest.raises(NotFoundError, match="no embodiment named 'lathe'"):
        datasets.ingest(ws, "x", "steelco", "sakai", policy_file, "lathe", [write_frames(tmp_path / "f.parquet")])


def test_episode_repeated_across_files_is_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    a = write_frames(tmp_path / "a.parquet", make_frames(episodes=2))
    b = write_frames(tmp_path / "b.parquet", make_frames(episodes=2, first_episode=1))
    with pytest.raises(TelemetryError, match="episode 1 also appears in"):
        _ingest(ws, tmp_path, policy_file, files=[a, b])


def test_ingest_is_all_or_nothing_under_a_failure_midway(ws: Workspace, tmp_path: Path, policy_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "SHARD_FRAMES", 50)
    real = S.ShardWriter._finish
    calls = {"n": 0}

    def failing(self, *args, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the third shard's fsync and rename fail
            raise OSError("disk full (injected)")
        return real(self, *args, **kw)

    monkeypatch.setattr(S.ShardWriter, "_finish", failing)
    before = ws.ledger.size()
    with pytest.raises(OSError, match="injected"):
        _ingest(ws, tmp_path, policy_file)
    assert calls["n"] == 3
    assert _catalog_rows(ws, T.datasets) == [] and _catalog_rows(ws, T.shards) == []
    assert _catalog_rows(ws, T.key_wraps) == []
    assert not list(Path(registry.get_site(ws, "sakai").root).rglob("*.parquet"))
    # the allow decision, then its failure: no ingest entry claims data that is not there
    decision, abandoned = ws.ledger.entries(before)
    assert (decision.entry.kind, abandoned.entry.kind) == ("decision", "data.abandoned")
    assert abandoned.entry.body["closes"] == [decision.index] and "injected" in abandoned.entry.body["reason"]
    assert not list((Path(registry.get_site(ws, "sakai").root) / ".staging").iterdir())
    monkeypatch.setattr(S.ShardWriter, "_finish", real)
    assert _ingest(ws, tmp_path, policy_file).frames == 200


def test_ingest_is_all_or_nothing_when_the_catalog_commit_fails(ws: Workspace, tmp_path: Path,
                                                                policy_file: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("ledger unavailable (injected)")

    monkeypatch.setattr(ws, "record_many", broken)
    with pytest.raises(RuntimeError):
        _ingest(ws, tmp_path, policy_file)
    assert _catalog_rows(ws, T.datasets) == [] and _catalog_rows(ws, T.shards) == []
    assert not list(Path(registry.get_site(ws, "sakai").root).rglob("*.parquet"))


def test_tampered_shard_is_detected(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    result = _ingest(ws, tmp_path, policy_file)
    shard = Path(registry.get_site(ws, "sakai").root) / result.shards[0].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="was altered"):
        datasets.read(ws, "furnace", "sakai")
    with pytest.raises(IntegrityError, match="was altered"):
        datasets.copy(ws, "furnace", "tokyo")


def test_withdraw_shreds_keys_and_refuses_everything_after(ws: Workspace, tmp_path: Path,
                                                           policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    datasets.copy(ws, "furnace", "tokyo")
    with pytest.raises(PolicyDenied):
        datasets.withdraw(ws, "furnace", "autoco")  # not the owner
    out = datasets.withdraw(ws, "furnace", "steelco")
    assert sorted(out["shredded_at"]) == ["sakai", "tokyo"]
    assert out["derived_models"] == [] and out["derived_models_clause"] == "stop-serving"
    assert _catalog_rows(ws, T.key_wraps) == []
    for action in ("read", "copy"):
        with pytest.raises(PolicyDenied) as err:
            if action == "read":
                datasets.read(ws, "furnace", "sakai")
            else:
                datasets.copy(ws, "furnace", "ohio")
        assert "dataset/furnace/withdrawn" in err.value.rules
    for act in ("export", "train"):
        d = ws.pdp().decide(datasets.Request("site:sakai", act, "furnace", "sakai", "fine-tuning"))
        assert not d.allowed and "dataset/furnace/withdrawn" in d.rules
    kinds = [e.entry.kind for e in ws.ledger.entries()]
    assert kinds.count("key.shred") == 2 and "consent.withdraw" in kinds
    assert datasets.show(ws, "furnace")["status"] == "withdrawn"


def test_site_jurisdiction_cannot_change_once_data_is_placed(ws: Workspace, tmp_path: Path,
                                                             policy_file: Path) -> None:
    registry.set_site_jurisdiction(ws, "tokyo", "KR")
    registry.set_site_jurisdiction(ws, "tokyo", "JP")
    _ingest(ws, tmp_path, policy_file)
    with pytest.raises(ValidationError, match="cannot change once data is placed"):
        registry.set_site_jurisdiction(ws, "sakai", "US")
    assert registry.get_site(ws, "sakai").jurisdiction == "JP"


def test_show_and_list_say_where_every_shard_sits(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    datasets.copy(ws, "furnace", "tokyo")
    shown = datasets.show(ws, "furnace")
    assert {(s["site"], s["jurisdiction"]) for s in shown["shards"]} == {("sakai", "JP"), ("tokyo", "JP")}
    assert all(os.path.exists(s["path"]) for s in shown["shards"])
    assert datasets.list_datasets(ws)[0]["sites"] == ["sakai", "tokyo"]


def test_workspace_rule_overrides_dataset_policy(tmp_path: Path) -> None:
    from conftest import build_consortium

    ws = build_consortium(Workspace.init(tmp_path / "jp", "jp-only", jurisdiction="JP"), tmp_path)
    p = tmp_path / "global.toml"
    p.write_text('jurisdictions = ["JP", "US"]\npurposes = ["fine-tuning"]\nexpires = 2031-01-01\n')
    datasets.ingest(ws, "furnace", "steelco", "sakai", p, "furnace-line-3", [write_frames(tmp_path / "f.parquet")])
    with pytest.raises(PolicyDenied) as err:
        datasets.copy(ws, "furnace", "ohio")
    assert err.value.rules == ["workspace/jurisdiction-JP"]
    ws.close()


def test_lerobot_folder_ingests(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    from onshore.telemetry.lerobot import write_lerobot_v3
    from onshore.workspace.registry import get_embodiment

    src = make_frames(episodes=3, frames=20)
    out = tmp_path / "lerobot"
    write_lerobot_v3(src, get_embodiment(ws, "furnace-line-3"), out)
    result = datasets.ingest(ws, "lr", "steelco", "sakai", policy_file, "furnace-line-3", [out])
    assert result.frames == 60
    back = datasets.read(ws, "lr", "sakai")
    assert back.column("observation.state").to_pylist() == src.column("observation.state").to_pylist()


def test_export_then_reingest_is_lossless(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    src = make_frames(episodes=3, frames=25)
    _ingest(ws, tmp_path, policy_file, files=[write_frames(tmp_path / "src.parquet", src)])
    out = tmp_path / "export"
    result = datasets.export(ws, "furnace", "sakai", out, purpose="fine-tuning")
    assert result["frames"] == 75 and (out / "meta" / "info.json").exists()
    entry = ws.ledger.get(result["ledger_index"]).entry
    assert entry.kind == "data.export" and entry.actor == "site:sakai" and "meta/info.json" in entry.body["files"]
    # The dataset card (LeRobot's README with its YAML header), recorded with the other files.
    card = (out / "README.md").read_text()
    assert "README.md" in entry.body["files"]
    header = card.split("---\n")[1].splitlines()
    assert 'license: "other"' in header and '- "LeRobot"' in header and '- "robotics"' in header
    assert 'task_categories:' in header and '  data_files: "data/*/*.parquet"' in header
    info = json.loads((out / "meta" / "info.json").read_text())
    assert f"onshore: {json.dumps(info['onshore'], sort_keys=True)}" in header
    assert "It may be held and used only in JP, at any site there." in card
    assert "It may be used only for foundation-pretraining and fine-tuning." in card
    assert "| observation.state | float32 | [3] | zone1_temp (degC), zone2_temp (degC), o2_percent (percent) |" in card
    assert "refuse this dataset as it is" in card  # furnace-line-3 names no environment groups
    datasets.ingest(ws, "again", "steelco", "tokyo", policy_file, "furnace-line-3", [out])
    a, b = datasets.read(ws, "furnace", "sakai"), datasets.read(ws, "again", "tokyo")
    for col in ("episode_index", "frame_index", "observation.state", "action", "task",
                "next.reward", "next.done"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    # LeRobot keeps time in float32: the re-ingested timestamps are the originals rounded to it
    assert np.array_equal(a.column("timestamp").to_numpy().astype(np.float32),
                          b.column("timestamp").to_numpy())


def test_export_outside_policy_is_refused(ws: Workspace, tmp_path: Path, policy_file: Path) -> None:
    _ingest(ws, tmp_path, policy_file)
    with pytest.raises(PolicyDenied) as err:
        datasets.export(ws, "furnace", "sakai", tmp_path / "x", purpose="advertising")
    assert err.value.rules == ["dataset/furnace/purposes"]
    assert not (tmp_path / "x").exists()


def test_a_large_single_file_streams_with_frame_progress(ws: Workspace, tmp_path: Path, policy_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "SHARD_FRAMES", 100_000)
    f = write_frames(tmp_path / "big.parquet", make_frames(episodes=3, frames=50_000))
    seen: list[tuple[str, int, int]] = []
    result = datasets.ingest(ws, "big", "steelco", "sakai", policy_file, "furnace-line-3", [f],
                             lambda *a: seen.append(a))
    # frames validated and encrypted batch by batch, not "0 of 1 file" until the end
    assert [s[0] for s in seen] == ["validate + encrypt"] * len(seen) and len(seen) >= 3
    assert [s[1] for s in seen] == sorted(s[1] for s in seen) and seen[-1][1:] == (150_000, 150_000)
    assert [s.frames for s in result.shards] == [100_000, 50_000]
    # fingerprints taken batch by batch (episodes span batches) equal those of the whole table
    from onshore.telemetry.provenance import episode_fingerprints
    entry = ws.ledger.get(result.ledger_indices[-1]).entry
    assert entry.body["fingerprints"] == episode_fingerprints(pq.read_table(f))
    assert datasets.read(ws, "big", "sakai").equals(pq.read_table(f).cast(datasets.read(ws, "big", "sakai").schema))


def test_a_file_out_of_frame_order_is_still_ingested_in_order(ws: Workspace, tmp_path: Path,
                                                              policy_file: Path) -> None:
    src = make_frames(episodes=3, frames=20)
    shuffled = src.take(np.random.default_rng(1).permutation(src.num_rows))
    result = _ingest(ws, tmp_path, policy_file, files=[write_frames(tmp_path / "shuffled.parquet", shuffled)])
    back = datasets.read(ws, "furnace", "sakai")
    assert result.frames == 60 and back.column("episode_index").to_pylist() == src.column("episode_index").to_pylist()
    assert back.column("frame_index").to_pylist() == src.column("frame_index").to_pylist()
