"""Runs INSIDE a LeRobot virtualenv (see `make lerobot-venv`), never in Onshore's own.

Usage: python check.py EXPORT_A EXPORT_B WORKDIR

Feeds two Onshore LeRobot exports to LeRobot's own code and prints one JSON object of what it
said: the dataset card as huggingface_hub reads it, the metadata loader,
``dataset_to_policy_features``, ACT's and Diffusion's ``validate_features``, a few real ACT
training steps on the loaded frames, ``aggregate_datasets`` of both exports, and
``delete_episodes`` (what ``lerobot-edit-dataset --operation.type delete_episodes`` runs).
Every step is recorded with LeRobot's exception text if it refused.
Written for lerobot 0.4.4; no code of LeRobot is copied here, only called.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

logging.disable(logging.WARNING)


def _step(out: dict[str, Any], name: str, fn) -> Any:
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - LeRobot's refusal is the result we report
        out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                     "where": traceback.format_exc(limit=-2).strip().splitlines()[-3:]}
        return None
    out[name] = {"ok": True, **(value if isinstance(value, dict) else {})}
    return value


def main(a: Path, b: Path, work: Path) -> dict[str, Any]:
    import torch
    from lerobot import __version__ as lerobot_version
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.aggregate import aggregate_datasets
    from lerobot.datasets.dataset_tools import delete_episodes
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.datasets.utils import dataset_to_policy_features
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.factory import make_pre_post_processors

    out: dict[str, Any] = {"lerobot": lerobot_version, "torch": torch.__version__}

    def card() -> dict[str, Any]:
        from huggingface_hub import DatasetCard  # what the Hub and LeRobot's push_to_hub read

        return {"data": DatasetCard.load(a / "README.md").data.to_dict()}

    _step(out, "card", card)
    meta = _step(out, "metadata", lambda: LeRobotDatasetMetadata("onshore/a", root=a))
    if meta is None:
        return out
    out["metadata"].update(fps=meta.fps, episodes=meta.total_episodes, frames=meta.total_frames,
                           features=sorted(meta.features))
    feats = dataset_to_policy_features(meta.features)
    outputs = {k: f for k, f in feats.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in feats.items() if k not in outputs}
    out["policy_features"] = {k: [f.type.name, list(f.shape)] for k, f in feats.items()}

    def config(cls, **kw):
        cfg = cls(input_features=inputs, output_features=outputs, device="cpu", **kw)
        cfg.validate_features()
        return cfg

    act = _step(out, "act_validate_features",
                lambda: config(ACTConfig, chunk_size=8, n_action_steps=8, dim_model=32, dim_feedforward=64,
                               n_heads=2, n_encoder_layers=1, n_decoder_layers=1, latent_dim=8))
    _step(out, "diffusion_validate_features",
          lambda: config(DiffusionConfig, horizon=16, n_action_steps=8, down_dims=(16, 32)) and {})

    def train() -> dict[str, Any]:
        ds = LeRobotDataset("onshore/a", root=a,
                            delta_timestamps={"action": [i / meta.fps for i in act.action_delta_indices]})
        policy = ACTPolicy(act)
        pre, _post = make_pre_post_processors(act, dataset_stats=meta.stats)
        loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        losses = []
        for step, batch in enumerate(loader):
            loss, _ = policy.forward(pre(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(round(float(loss), 4))
            if step == 4:
                break
        return {"frames": len(ds), "steps": len(losses), "losses": losses,
                "sample_keys": sorted(k for k in ds[0] if k.startswith(("observation", "action")))}

    if act is not None:
        _step(out, "act_train", train)

    agg = work / "aggregate"
    if _step(out, "aggregate", lambda: aggregate_datasets(["onshore/a", "onshore/b"], "onshore/ab",
                                                           roots=[a, b], aggr_root=agg)) is not None \
            or out["aggregate"]["ok"]:
        m = LeRobotDatasetMetadata("onshore/ab", root=agg)
        out["aggregate"].update(root=str(agg), episodes=m.total_episodes, frames=m.total_frames,
                                info_keeps_onshore_block="onshore" in m.info,
                                episode_columns=sorted(c for c in m.episodes.column_names if "/" in c
                                                       and not c.startswith("stats/")))
    deleted = work / "deleted"
    if _step(out, "delete_episodes", lambda: delete_episodes(LeRobotDataset("onshore/a", root=a), [0],
                                                             output_dir=deleted, repo_id="onshore/a-del")) \
            is not None or out["delete_episodes"]["ok"]:
        m = LeRobotDatasetMetadata("onshore/a-del", root=deleted)
        out["delete_episodes"].update(root=str(deleted), episodes=m.total_episodes,
                                      info_keeps_onshore_block="onshore" in m.info,
                                      episode_columns=sorted(c for c in m.episodes.column_names if "/" in c
                                                             and not c.startswith("stats/")))
    return out


if __name__ == "__main__":
    work_dir = Path(sys.argv[3])
    # Set before LeRobot and huggingface_hub are imported: nothing may reach the network, and their
    # caches go into the work folder rather than the user's home.
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work_dir / "hf-home"),
                      HF_LEROBOT_HOME=str(work_dir / "lerobot-home"))
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), work_dir)))
