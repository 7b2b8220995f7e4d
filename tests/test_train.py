"""Training at a site on real simulator telemetry: refusals before any read, lineage, eval, finetune, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from _training import make_consortium
from onshore.cli.app import main
from onshore.errors import PolicyDenied, ValidationError
from onshore.model.text import HASHED
from onshore.train import data as TD
from onshore.train.loop import TrainConfig, TrainRequest, granted_datasets, train
from onshore.workspace import Workspace, datasets, models, registry
from onshore.workspace.registry import get_embodiment


@pytest.fixture
def consortium(tmp_path: Path, telemetry: dict[str, Path]) -> Iterator[Workspace]:
    ws = make_consortium(tmp_path, telemetry)
    yield ws
    ws.close()


def fast(steps: int = 12, **kw: object) -> TrainConfig:
    base = {"steps": steps, "batch_size": 16, "checkpoint_every": 5, "log_every": 2, "precision": "fp32",
            "text_encoder": HASHED, "warmup": 2}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def weights(ws: Workspace, name: str) -> dict[str, torch.Tensor]:
    """The model's saved tensors, opened through the key service (a recorded read at its site)."""
    loaded = models.load_model_for(ws, name, models.get_model(ws, name)["site"], "read",
                                   models.get_model(ws, name)["purpose"])
    return {f"weights.{k}": v for k, v in loaded.model.state_dict().items()}


def kinds_since(ws: Workspace, start: int) -> list[dict]:
    return [{"kind": e.entry.kind, **e.entry.body} for e in ws.ledger.entries(start, ws.ledger.size())]


def test_refused_before_any_byte_is_read_and_no_model_is_left(consortium: Workspace) -> None:
    ws = consortium
    start = ws.ledger.size()
    with pytest.raises(PolicyDenied) as e:
        train(ws, TrainRequest("m-us", "ohio", "foundation-pretraining", ("arms", "plant"), size="tiny", train=fast()))
    assert "dataset/arms/jurisdictions" in e.value.rules and "dataset/plant/jurisdictions" in e.value.rules
    assert e.value.exit_code == 3
    # one refusal among allowed datasets: nothing is read, not even the allowed ones
    with pytest.raises(PolicyDenied, match="arms-tokyo"):
        train(ws, TrainRequest("m-mixed", "sakai", "foundation-pretraining", ("arms", "arms-tokyo"), size="tiny",
                               train=fast()))
    entries = kinds_since(ws, start)
    assert {x["kind"] for x in entries} == {"decision"}  # decisions recorded, no key.release, no job
    assert not any((Path(registry.get_site(ws, s).root) / "models").exists() for s in ("ohio", "sakai"))
    assert models.list_models(ws) == []
    # the CLI says the rule and exits 3
    assert main(["-w", str(ws.root), "train", "--site", "ohio", "--datasets", "arms", "--purpose",
                 "foundation-pretraining", "--config", "tiny", "--steps", "2", "--name", "m-cli"]) == 3
    # a bad model option is refused before anything is decided or read
    size = ws.ledger.size()
    assert main(["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "arms", "--purpose",
                 "foundation-pretraining", "--config", "tiny", "--steps", "2", "--name", "m-opt",
                 "--model-option", "history=0"]) == 1
    assert ws.ledger.size() == size and models.list_models(ws) == []
    assert granted_datasets(ws, "sakai", "foundation-pretraining") == ["arms", "plant"]
    assert granted_datasets(ws, "tokyo", "fine-tuning") == ["arms-tokyo"]


def test_train_arms_and_plant_lineage_metrics_and_eval(consortium: Workspace, tmp_path: Path) -> None:
    ws = consortium
    start = ws.ledger.size()
    r = train(ws, TrainRequest("pool", "sakai", "foundation-pretraining", ("arms", "plant"), weights=(2.0, 1.0),
                               size="tiny", train=fast(holdout=0.3)))
    assert r is not None and r.steps == 12 and r.resumed_from == 0
    folder = Path(registry.get_site(ws, "sakai").root) / "models" / "pool"
    assert r.folder == folder
    for f in ("model.safetensors.sealed", "model.json.sealed", "metrics.csv", "loss.png"):
        assert (folder / f).is_file(), f
    assert not (folder / "model.safetensors").exists()  # no plaintext weights at rest
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss")
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "5", "6", "8", "10", "12"]
    entries = kinds_since(ws, start)
    loaded = models.load_model_for(ws, "pool", "sakai", "read", "foundation-pretraining")
    meta = loaded.meta
    assert {e["name"] for e in meta["embodiments"]} == {"sawyer-metaworld", "tennessee-eastman"}
    assert meta["site"] == "sakai" and meta["world_size"] == 1 and meta["code_version"].startswith("0.1.0+")
    assert [d["name"] for d in meta["datasets"]] == ["arms", "plant"]
    assert all(len(d["shards"]) == 1 for d in meta["datasets"])
    assert meta["metrics"]["heldout_loss_ema"] is not None
    ckpts = sorted((folder / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["key.wrap", "step-0000005", "step-0000010"]  # the last two are kept
    assert (ckpts[1] / "train.safetensors.sealed").is_file() and not (ckpts[1] / "train.safetensors").exists()
    releases = [x for x in entries if x["kind"] == "key.release"]
    assert [(x["dataset"], x["site"], x["action"], x["purpose"]) for x in releases] == [
        ("arms", "sakai", "train", "foundation-pretraining"), ("plant", "sakai", "train", "foundation-pretraining")]
    kinds = [x["kind"] for x in entries]
    assert kinds.count("job.start") == 1 and kinds.count("job.checkpoint") == 2 and kinds.count("job.end") == 1
    assert kinds[-1] == "model.release"
    release = entries[-1]
    assert release["files"] == r.files and release["site"] == "sakai" and release["jurisdiction"] == "JP"

    info = models.show_model(ws, "pool")
    assert info["members"] == ["arm-maker", "chem"] and info["jurisdiction"] == "JP"
    assert {d["dataset"]: d["weight"] for d in info["lineage"][0]["datasets"]} == {"arms": "2.0", "plant": "1.0"}
    assert [m["model"] for m in datasets.derived_models(ws, "plant")] == ["pool"]
    assert main(["-w", str(ws.root), "model", "list", "--json"]) == 0

    # closed loop at an allowed site; refused (exit 3) at a site outside the data's jurisdictions
    report = tmp_path / "reports"
    assert main(["-w", str(ws.root), "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                 "--policy", "pool", "--site", "sakai", "--workers", "1", "--reports", str(report), "--json"]) == 0
    written = json.loads(next(report.glob("*.json")).read_text())
    assert written["policy"] == "model:pool" and written["tasks"][0]["episodes"] == 1
    assert main(["-w", str(ws.root), "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                 "--policy", "pool", "--site", "ohio", "--workers", "1"]) == 3
    assert main(["-w", str(ws.root), "eval", "--env", "metaworld", "--policy", "pool"]) == 2  # --site needed: usage
    # acting without ensembling is a model's option, refused for the expert
    assert main(["-w", str(ws.root), "eval", "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                 "--policy", "pool", "--site", "sakai", "--workers", "1", "--no-ensemble", "--json"]) == 0
    assert main(["-w", str(ws.root), "eval", "--env", "metaworld", "--episodes", "1", "--no-ensemble"]) == 1

    # withdrawal reports the derived model with the dataset's clause
    out = datasets.withdraw(ws, "arms", "arm-maker")
    assert out["derived_models"] == [{"model": "pool", "site": "sakai", "via": "trained on it"}]
    assert out["derived_models_clause"] == "stop-serving"
    assert ws.verify_ledger().size == ws.ledger.size()


def test_finetune_a_new_embodiment_with_the_trunk_frozen(consortium: Workspace) -> None:
    ws = consortium
    train(ws, TrainRequest("arm-base", "sakai", "foundation-pretraining", ("arms",), size="tiny", train=fast(6)))
    base = weights(ws, "arm-base")
    r = train(ws, TrainRequest("plant-ft", "sakai", "fine-tuning", ("plant",), size="tiny", base="arm-base",
                               train=fast(6, freeze_trunk=True)))
    assert r is not None
    tuned = weights(ws, "plant-ft")
    trunk = [k for k in base if k.startswith(("weights.blocks.", "weights.task_proj.", "weights.ln_f."))]
    arm_private = [k for k in base if ".sawyer-metaworld" in k]
    assert trunk and arm_private
    assert all(torch.equal(base[k], tuned[k]) for k in trunk + arm_private)  # frozen, and no data: unchanged
    new = [k for k in tuned if ".tennessee-eastman" in k]
    assert new and not any(k in base for k in new)  # a fresh stem and head for the plant
    lineage = models.lineage(ws, "plant-ft")
    assert [level["model"] for level in lineage] == ["plant-ft", "arm-base"]
    assert [m["model"] for m in datasets.derived_models(ws, "arms")] == ["arm-base", "plant-ft"]
    assert datasets.derived_models(ws, "arms")[1]["via"] == "fine-tuned from arm-base"


def test_stream_holds_one_shard_and_the_mix_is_resumable(tmp_path: Path, telemetry: dict[str, Path]) -> None:
    ws = make_consortium(tmp_path, telemetry, shard_frames=150)
    try:
        opened = datasets.open_resident(ws, ["arms", "plant"], "sakai", "foundation-pretraining", "train")
        embs = {d.embodiment: get_embodiment(ws, d.embodiment) for d in opened}
    finally:
        ws.close()
    assert len(opened[0].shards) >= 3 and len(opened[1].shards) >= 2
    reads: list[tuple[str, int]] = []

    class Counting:
        def __init__(self, d: datasets.ResidentDataset) -> None:
            self.d, self.name, self.embodiment, self.shards = d, d.name, d.embodiment, d.shards

        def iter_shard(self, i: int):  # type: ignore[no-untyped-def]
            reads.append((self.name, i))
            return self.d.iter_shard(i)

    sources = [Counting(d) for d in opened]
    from onshore.model.network import model_config

    cfg = model_config("tiny")
    sc = TD.scan(sources, embs, cfg)
    vectors = np.zeros((len(sc.tasks), cfg.text_dim), np.float32)
    assert sum(sc.train_windows.values()) == sum(d.frames for d in opened)
    reads.clear()
    mixer = TD.Mixer(sources, embs, [1.0, 1.0], 40, sc, vectors, cfg, seed=3, holdout=0.0)
    frames_arms = opened[0].frames
    steps_per_epoch = frames_arms // 20  # 20 arm windows per batch: within one epoch
    for _ in range(steps_per_epoch):
        mixer.next_batch()
    arm_reads = [i for n, i in reads if n == "arms"]
    assert sorted(arm_reads[:len(opened[0].shards)]) == list(range(len(opened[0].shards)))  # each shard once
    assert len(arm_reads) == len(opened[0].shards)  # one decrypted shard at a time, never re-read in an epoch
    # a restored mixer continues with exactly the same batches
    state = json.loads(json.dumps(mixer.state()))
    want = [mixer.next_batch() for _ in range(3)]
    other = TD.Mixer(sources, embs, [1.0, 1.0], 40, sc, vectors, cfg, seed=3, holdout=0.0)
    other.restore(state)
    for a, b in zip(want, [other.next_batch() for _ in range(3)], strict=True):
        for e in a:
            for k in a[e]:
                assert np.array_equal(a[e][k], b[e][k])
    # two ranks' shares are a partition of the one-process batch
    whole = TD.Mixer(sources, embs, [3.0, 1.0], 40, sc, vectors, cfg, seed=5, holdout=0.0).next_batch()
    parts = [TD.Mixer(sources, embs, [3.0, 1.0], 40, sc, vectors, cfg, seed=5, holdout=0.0, rank=r,
                      world=2).next_batch() for r in (0, 1)]
    assert len(whole["sawyer-metaworld"]["state"]) == 30 and len(whole["tennessee-eastman"]["state"]) == 10
    for e in whole:
        merged = np.concatenate([p[e]["state"] for p in parts])
        assert sorted(map(bytes, merged)) == sorted(map(bytes, whole[e]["state"]))


def _cli_train(ws_root: Path, name: str, steps: int, extra: list[str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "onshore", "-w", str(ws_root), "train", "--site", "sakai", "--datasets",
           "arms,plant", "--purpose", "foundation-pretraining", "--config", "tiny", "--steps", str(steps),
           "--batch-size", "32", "--checkpoint-every", "40", "--name", name, "--threads", "1", "--precision",
           "fp32", "--text-encoder", HASHED, "--json", *(extra or [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_kill_9_then_the_same_command_resumes_to_the_same_weights(consortium: Workspace) -> None:
    ws = consortium
    root = ws.root
    ws.close()
    steps = 400
    proc = _cli_train(root, "killed", steps)
    # step 80's folder appears only after step 40's job.checkpoint entry is recorded; killing as soon as
    # step 40's folder appeared could land between sealing it and recording it, and an unrecorded
    # checkpoint is (rightly) not resumed from
    ckpt = root / "sites" / "sakai" / "data" / "models" / "killed" / "checkpoints" / "step-0000080" / "digests.json"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Workspace.open(root) as w:
        assert models.list_models(w) == []  # killed: no model released
    resumed = _cli_train(root, "killed", steps)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    info = json.loads(out)
    assert info["resumed_from_step"] >= 40 and info["steps"] == steps
    clean = _cli_train(root, "clean", steps)
    out2, err2 = clean.communicate(timeout=300)
    assert clean.returncode == 0, err2
    with Workspace.open(root) as w:
        a, b = weights(w, "killed"), weights(w, "clean")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert info["files"]["model.safetensors"] == json.loads(out2)["files"]["model.safetensors"]
    with Workspace.open(root) as w:
        starts = [e.entry.body for e in w.ledger.entries(0, w.ledger.size(), kinds=["job.start"])
                  if e.entry.body["model"] == "killed"]
        assert [s["resumed_from_step"] for s in starts] == [0, info["resumed_from_step"]]
    # a released model name trained again makes its next version; the released one is untouched
    assert main(["-w", str(root), "train", "--site", "sakai", "--datasets", "arms", "--purpose",
                 "foundation-pretraining", "--config", "tiny", "--steps", "5", "--name", "killed"]) == 0
    with Workspace.open(root) as w:
        assert [m["name"] for m in models.list_models(w) if m["model_name"] == "killed"] == ["killed", "killed@2"]
        again = weights(w, "killed")
        assert all(torch.equal(again[k], a[k]) for k in a)


def test_windows_carry_the_action_applied_before_each_frame() -> None:
    # two episodes of 3 and 4 frames; action i is [i, -i]
    n = 7
    ep_start = np.array([0, 0, 0, 3, 3, 3, 3])
    ep_end = np.array([3, 3, 3, 7, 7, 7, 7])
    fr = TD.Frames(np.arange(n, dtype=np.float32)[:, None].repeat(2, 1), np.stack([np.arange(n), -np.arange(n)], 1)
                   .astype(np.float32), np.zeros(n, np.int64), [""], np.zeros(n, np.int64), ep_start, ep_end,
                   np.zeros(n, bool))
    w = TD.windows(fr, np.array([0, 1, 4, 6]), history=3, chunk=2)
    assert w["prev_known"].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 1], [1, 1, 1]]
    assert w["prev_action"][1, -1].tolist() == [0, 0]  # before frame 1: action 0
    assert w["prev_action"][2, -1].tolist() == [3, -3]  # before frame 4: action 3, not episode 1's last
    assert w["prev_action"][3, :, 0].tolist() == [3, 4, 5]  # before frames 4, 5, 6
    assert w["state"][3, :, 0].tolist() == [4, 5, 6]


def test_a_feedback_model_trains_on_plant_telemetry_and_drives_the_plant(consortium: Workspace) -> None:
    from onshore.sim.rollout import EpisodeSpec
    from onshore.sim.tep import TepEnv

    ws = consortium
    assert main(["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "plant", "--purpose",
                 "foundation-pretraining", "--config", "tiny", "--steps", "8", "--batch-size", "16", "--precision",
                 "fp32", "--text-encoder", "hashed-ngram", "--name", "valves", "--model-option", "action_feedback=true",
                 "--model-option", "ensemble=false"]) == 0
    loaded = models.load_model_for(ws, "valves", "sakai", "read", "foundation-pretraining")
    assert loaded.config.action_feedback and loaded.meta["config"]["action_feedback"] is True
    from onshore.model.policy import ModelPolicy

    agent = ModelPolicy(loaded, "tennessee-eastman")
    env = TepEnv()
    state, _ = env.reset(EpisodeSpec("tep", "base", 0, 0, 7), 60.0)
    agent.reset(env.task_text("base"))
    for _ in range(5):
        action = agent.act(state)
        assert action.shape == (12,) and np.isfinite(action).all()
        state = env.step(action).state
    assert agent._known.tolist() == [1.0] * loaded.config.history  # it fed back what it applied


def test_short_runs_checkpoint_at_their_middle_and_the_message_names_the_sealed_files(
        consortium: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    from onshore.cli.train import default_checkpoint_every

    assert [default_checkpoint_every(n) for n in (5, 99, 100, 300, 500, 501, 4000)] == [5, 99, 50, 150, 250, 500,
                                                                                         500]
    ws = consortium
    assert main(["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "plant", "--purpose",
                 "foundation-pretraining", "--config", "tiny", "--steps", "100", "--batch-size", "8", "--precision",
                 "fp32", "--text-encoder", HASHED, "--threads", "1", "--name", "short"]) == 0
    out = capsys.readouterr().out
    steps = [e.entry.body["step"] for e in ws.ledger.entries(kinds=("job.checkpoint",))
             if e.entry.body["model"] == "short"]
    assert steps == [50]  # a 100-step run checkpoints once, at its middle, so a kill can resume it
    row = models.get_model(ws, "short")
    folder = Path(registry.get_site(ws, "sakai").root) / row["folder"]
    for name in row["files"]:
        assert f"{name}.sealed" in out and (folder / f"{name}.sealed").exists()
    assert "model.safetensors.sealed" in out


def test_training_metrics_go_to_tensorboard_event_files(consortium: Workspace, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws = consortium
    base = ["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "plant", "--purpose",
            "foundation-pretraining", "--config", "tiny", "--steps", "6", "--batch-size", "8", "--precision", "fp32",
            "--text-encoder", HASHED, "--threads", "1"]
    (tmp_path / "afile").write_text("x")
    size = ws.ledger.size()
    assert main([*base, "--name", "tb-bad", "--tensorboard", str(tmp_path / "afile")]) == 1
    assert "is a file" in capsys.readouterr().err and ws.ledger.size() == size  # refused before anything
    assert main([*base, "--name", "tb", "--tensorboard", str(tmp_path / "tb")]) == 0
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "tb/loss" in tags and "tb/samples_per_s" in tags
    losses = acc.Scalars("tb/loss")
    assert losses[-1].step == 6 and all(np.isfinite(e.value) for e in losses)
    rows = (Path(registry.get_site(ws, "sakai").root) / models.get_model(ws, "tb")["folder"] / "metrics.csv")
    assert rows.exists()  # the CSV is still written: TensorBoard is an extra view, not a replacement


def test_finetune_refits_state_statistics_and_reports_the_heldout_action_loss(consortium: Workspace) -> None:
    ws = consortium
    # the MLP baseline trains and loads through the same paths as the transformer
    r = train(ws, TrainRequest("arm-mlp", "sakai", "foundation-pretraining", ("arms",), size="mlp",
                               train=fast(4, holdout=0.3)))
    assert r is not None and 400_000 < r.parameters < 800_000
    mlp = models.load_model_for(ws, "arm-mlp", "sakai", "read", "foundation-pretraining")
    assert mlp.model.config.trunk == "mlp" and mlp.meta["metrics"]["heldout_action_loss_ema"] > 0
    start = ws.ledger.size()
    with pytest.raises(ValidationError, match="needs a base model"):
        train(ws, TrainRequest("no-base", "sakai", "fine-tuning", ("arms",), size="tiny",
                               train=fast(4, refit_stats=True)))
    assert ws.ledger.size() == start and not models_named(ws, "no-base")
    # the arms' statistics come from the arms' data, the plant's stay the base's
    train(ws, TrainRequest("arm-base", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                           weights=(1.0, 1.0), train=fast(4)))
    r = train(ws, TrainRequest("arm-refit", "sakai", "fine-tuning", ("arms",), size="tiny", base="arm-base",
                               train=fast(4, refit_stats=True, holdout=0.3)))
    assert r is not None and r.metrics["heldout_action_loss_ema"] is not None
    assert 0 < r.metrics["heldout_action_loss_ema"] <= r.metrics["heldout_loss_ema"]
    base = {s.name: s for s in models.load_model_for(ws, "arm-base", "sakai", "read",
                                                     "foundation-pretraining").model.specs.values()}
    tuned = {s.name: s for s in models.load_model_for(ws, "arm-refit", "sakai", "read",
                                                      "fine-tuning").model.specs.values()}
    arm = "sawyer-metaworld"
    assert tuned[arm].state_mean != base[arm].state_mean
    assert tuned[arm].action_low == base[arm].action_low and tuned[arm].groups == base[arm].groups
    assert tuned["tennessee-eastman"] == base["tennessee-eastman"]
    header = (Path(registry.get_site(ws, "sakai").root) / "models" / "arm-refit" / "metrics.csv").read_text()
    assert "heldout_action_loss" in header.splitlines()[0]


def models_named(ws: Workspace, name: str) -> list[dict]:
    return [m for m in models.list_models(ws) if m["name"] == name]


def test_balanced_loss_weighs_each_embodiment_alike_and_keeps_the_scale() -> None:
    from onshore.train.loop import _balanced_loss

    # two embodiments: losses 1.0 and 0.01 per sample (16 and 8 samples), a third absent
    parts = torch.tensor([[16.0, 0.0, 16.0], [0.08, 0.0, 8.0], [0.0, 0.0, 0.0]], requires_grad=True)
    avg = torch.zeros(3)
    loss = _balanced_loss(parts, 0.5, avg)
    # first step: each running mean starts at its own loss, so the loss is the mean of the means
    assert torch.allclose(avg, torch.tensor([1.0, 0.01, 0.0]))
    assert float(loss.detach()) == pytest.approx((1.0 + 0.01) / 2)
    loss.backward()
    g = parts.grad
    assert g is not None
    # d loss / d (action sum) per sample: the small-loss embodiment is pushed on as hard as the big
    # one relative to its own scale (1/avg), both times the same overall scale
    per_sample = g[:2, 0] * parts.detach()[:2, 2] * avg[:2]
    assert torch.allclose(per_sample, per_sample[0].expand(2))
    assert float(g[2, 0]) == 0.0  # absent: no push (its parameters still join the graph with zero)


def test_training_with_balanced_embodiments_records_the_option(consortium: Workspace) -> None:
    ws = consortium
    r = train(ws, TrainRequest("balanced", "sakai", "foundation-pretraining", ("arms", "plant"),
                               size="tiny", train=fast(balance=True)))
    assert r is not None and r.steps == 12 and np.isfinite(r.metrics["final_loss"])
    start = next(e for e in ws.ledger.entries(kinds=["job.start"]) if e.entry.body["model"] == "balanced")
    assert start.entry.body["train"]["balance"] is True
    plain = train(ws, TrainRequest("plain", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                                   train=fast()))
    assert plain is not None and plain.metrics["final_loss"] != r.metrics["final_loss"]  # another objective


def test_holdout_from_holds_episodes_out_of_the_named_datasets_only(tmp_path: Path,
                                                                     telemetry: dict[str, Path]) -> None:
    from onshore.model.network import model_config

    ws = make_consortium(tmp_path, telemetry, shard_frames=150)
    try:
        opened = datasets.open_resident(ws, ["arms", "plant"], "sakai", "foundation-pretraining", "train")
        embs = {d.embodiment: get_embodiment(ws, d.embodiment) for d in opened}
        cfg = model_config("tiny")
        arms_alone = TD.scan(opened[:1], embs, cfg, 0.5)
        arms_only = TD.scan(opened, embs, cfg, [0.5, 0.0])
        frames = {d.name: d.frames for d in opened}
        assert arms_only.train_windows["plant"] == frames["plant"]  # the plant holds nothing out
        assert arms_only.train_windows["arms"] == arms_alone.train_windows["arms"] < frames["arms"]
        assert set(arms_only.heldout) == {"sawyer-metaworld"}  # the held-out loss is the arms' alone
        assert len(arms_only.heldout["sawyer-metaworld"]["task"]) == len(arms_alone.heldout["sawyer-metaworld"]["task"])
        with pytest.raises(ValidationError, match="2 datasets"):
            TD.scan(opened, embs, cfg, [0.5])
        # through the trainer and the CLI: names checked before anything is decided or read
        start = ws.ledger.size()
        with pytest.raises(ValidationError, match="not among the datasets"):
            train(ws, TrainRequest("h-bad", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                                   train=fast(4, holdout=0.3, holdout_from=("nope",))))
        with pytest.raises(ValidationError, match="--holdout > 0"):
            train(ws, TrainRequest("h-zero", "sakai", "foundation-pretraining", ("arms", "plant"), size="tiny",
                                   train=fast(4, holdout_from=("arms",))))
        assert ws.ledger.size() == start and not models_named(ws, "h-bad") and not models_named(ws, "h-zero")
        assert main(["-w", str(ws.root), "train", "--site", "sakai", "--datasets", "arms,plant", "--purpose",
                     "foundation-pretraining", "--config", "tiny", "--steps", "4", "--batch-size", "16",
                     "--text-encoder", HASHED, "--holdout", "0.5", "--holdout-from", "arms", "--name", "h-arms"]) == 0
        meta = models.load_model_for(ws, "h-arms", "sakai", "read", "foundation-pretraining").meta
        assert meta["metrics"]["heldout_action_loss_ema"] > 0
    finally:
        ws.close()
