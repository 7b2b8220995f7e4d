"""The same training code in 1 and 2 processes (torchrun, gloo on CPU): DDP and FSDP2 agree with 1 process.

Gradients are compared directly (``dist_grad_worker.py``) because Adam would hide a gradient
that is W times too large, which is what FSDP2 on gloo produced without the SUM workaround
(PyTorch issue 162338); whole training runs are then compared through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from _training import make_consortium
from onshore.model.text import HASHED
from onshore.workspace import Workspace, models

WORKER = Path(__file__).with_name("dist_grad_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_processes_average_gradients_like_one(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    run([sys.executable, str(WORKER), str(tmp_path / "one")])
    run(torchrun(str(WORKER), str(tmp_path / "two")))
    for strategy in ("ddp", "fsdp"):
        one = load_file(str(tmp_path / "one" / f"{strategy}.safetensors"))
        two = load_file(str(tmp_path / "two" / f"{strategy}.safetensors"))
        assert one.keys() == two.keys()
        for k in one:
            scale = one[k].abs().max().item() + 1e-8
            assert (one[k] - two[k]).abs().max().item() <= 1e-5 * scale + 1e-7, (strategy, k)


def test_torchrun_ddp_and_fsdp_train_the_same_weights_as_one_process(
        tmp_path: Path, telemetry: dict[str, Path]) -> None:
    ws = make_consortium(tmp_path, telemetry)
    root = ws.root
    ws.close()

    def cmd(name: str, *extra: str) -> list[str]:
        return ["-m", "onshore", "-w", str(root), "train", "--site", "sakai", "--datasets", "arms,plant",
                "--purpose", "foundation-pretraining", "--config", "tiny", "--steps", "8", "--batch-size", "32",
                "--name", name, "--threads", "1", "--precision", "fp32", "--text-encoder", HASHED, "--json", *extra]

    one = json.loads(run([sys.executable, *cmd("one")]).stdout)
    ddp = json.loads(run(torchrun(*cmd("ddp"))).stdout)
    fsdp = json.loads(run(torchrun(*cmd("fsdp", "--strategy", "fsdp"))).stdout)
    assert one["world_size"] == 1 and ddp["world_size"] == 2 and fsdp["world_size"] == 2
    with Workspace.open(root) as ws:
        loaded = {n: models.load_model_for(ws, n, "sakai", "read", "foundation-pretraining")
                  for n in ("one", "ddp", "fsdp")}
    w1 = loaded["one"].model.state_dict()
    for other in (ddp, fsdp):
        w2 = loaded[other["model"]].model.state_dict()
        assert w1.keys() == w2.keys()
        worst = max((w1[k] - w2[k]).abs().max().item() for k in w1 if w1[k].dtype == torch.float32)
        assert worst < 1e-4, (other["model"], worst)
    assert loaded["fsdp"].meta["strategy"] == "fsdp"
