"""A consortium for training tests: three sites, two members, arms and plant telemetry ingested."""

from __future__ import annotations

from pathlib import Path

import pytest

from onshore.model.text import HASHED
from onshore.train.loop import TrainConfig, TrainRequest, train
from onshore.workspace import Workspace, datasets, models, registry

POLICY = """jurisdictions = ["JP"]
sites = []
purposes = [{purposes}]
expires = 2031-03-31
derived_models = "{clause}"
"""


def make_consortium(root: Path, telemetry: dict[str, Path], shard_frames: int | None = None) -> Workspace:
    """Sites sakai/tokyo (JP) and ohio (US); arms and plant at sakai, a tokyo-only set at tokyo."""
    ws = Workspace.init(root / "ws", "train-test")
    registry.add_site(ws, "sakai", "JP", "storage,compute")
    registry.add_site(ws, "tokyo", "JP", "storage,compute,serve")
    registry.add_site(ws, "ohio", "US", "storage,compute")
    registry.add_member(ws, "arm-maker")
    registry.add_member(ws, "chem")
    for name, folder, member, site, purposes, clause in (
        ("arms", telemetry["arms"], "arm-maker", "sakai", '"foundation-pretraining", "fine-tuning"', "stop-serving"),
        ("plant", telemetry["plant"], "chem", "sakai", '"foundation-pretraining", "fine-tuning"', "keep"),
        ("arms-tokyo", telemetry["arms"], "arm-maker", "tokyo", '"fine-tuning"', "keep"),
    ):
        emb = next(folder.glob("*.toml"))
        if emb.stem not in {e.name for e in registry.list_embodiments(ws)}:
            registry.add_embodiment(ws, emb)
        policy = root / f"{name}.toml"
        text = POLICY.format(purposes=purposes, clause=clause)
        if name == "arms-tokyo":
            text = text.replace("sites = []", 'sites = ["tokyo"]')
        policy.write_text(text)
        emb_name = "sawyer-metaworld" if "arms" in name else "tennessee-eastman"
        old = datasets.SHARD_FRAMES
        if shard_frames:
            datasets.SHARD_FRAMES = shard_frames
        try:
            datasets.ingest(ws, name, member, site, policy, emb_name, sorted(folder.glob("*.parquet")))
        finally:
            datasets.SHARD_FRAMES = old
    return ws


def fast(steps: int = 6, **kw: object) -> TrainConfig:
    """A few tiny steps with a checkpoint every two (for tests of runs, not of learning)."""
    base = {"steps": steps, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "precision": "fp32",
            "text_encoder": HASHED, "warmup": 1}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


class Interrupted(Exception):
    """Stands for a kill: the run stops after a checkpoint, leaving its folder as a killed run does."""


def interrupted_run(ws: Workspace, req: TrainRequest, after: int) -> None:
    """Run ``req`` until step ``after`` and stop it there, as if killed; no model is released."""
    def stop(step: int, _total: int, _m: dict[str, float]) -> None:
        if step >= after:
            raise Interrupted
    with pytest.raises(Interrupted):
        train(ws, req, progress=stop)
    assert req.name not in {m["name"] for m in models.list_models(ws)}
