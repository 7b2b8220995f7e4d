"""Run under torchrun (or plain python for 1 process): one training step's gradients, saved.

Usage: python tests/dist_grad_worker.py OUT_FOLDER (writes ddp.safetensors and fsdp.safetensors
there, one after the other in the same process group). Every process builds the same
model and the same global batch, keeps its share (windows rank, rank + W, ...), scales its summed
loss like the training loop does, and backpropagates through ``onshore.train.distributed.wrap``.
Rank 0 saves the full gradients. With correct averaging they equal one process's gradients;
FSDP2 on gloo without the SUM workaround gives W times them (PyTorch issue 162338) — the
optimiser (Adam) would hide that, which is why this compares gradients, not weights.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from safetensors.torch import save_file

from onshore.model.network import EmbodimentSpec, FoundationModel, init_seed, model_config
from onshore.train import distributed as D


def main(out: str) -> None:
    torch.set_num_threads(1)
    world = D.setup("cpu")
    for strategy in D.STRATEGIES:
        step(world, strategy, f"{out}/{strategy}.safetensors")
    D.teardown(world)


def step(world: D.World, strategy: str, out: str) -> None:
    cfg = model_config("tiny")
    specs = [EmbodimentSpec("arm", 6, 2, (("a", (0, 1, 2)), ("b", (3, 4, 5))), (0.0,) * 6, (1.0,) * 6,
                            (-1.0,) * 2, (1.0,) * 2),
             EmbodimentSpec("plant", 5, 3, (("all", (0, 1, 2, 3, 4)),), (0.0,) * 5, (1.0,) * 5,
                            (-1.0,) * 3, (1.0,) * 3)]
    init_seed(7)
    net = FoundationModel(cfg, specs)
    model = D.wrap(net, world, strategy)
    rng = np.random.default_rng(3)
    batch_size = 8
    full = {}
    for s in specs:
        full[s.name] = {
            "state": rng.normal(size=(batch_size, cfg.history, s.state_dim)).astype(np.float32),
            "task": rng.normal(size=(batch_size, cfg.text_dim)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(batch_size, cfg.chunk, s.action_dim)).astype(np.float32),
            "action_mask": np.ones((batch_size, cfg.chunk), np.float32),
            "next_state": rng.normal(size=(batch_size, s.state_dim)).astype(np.float32),
            "next_mask": np.ones(batch_size, np.float32),
        }
    mine = {e: {k: torch.from_numpy(v[world.rank::world.size].copy()) for k, v in g.items()} for e, g in full.items()}
    sums = model(mine)
    loss = (sums[0] + cfg.world_weight * sums[1]) * (world.size / (2 * batch_size))
    loss.backward()
    grads = {n: D.to_full(p.grad).detach().clone() for n, p in net.named_parameters()}
    if world.main:
        save_file(grads, out)
    D.barrier(world)


if __name__ == "__main__":
    main(sys.argv[1])
