"""One process or many: the same training code under ``torchrun`` (gloo on CPU, NCCL on GPUs).

- :func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins
  the process group; a plain ``python`` run is world size 1 with no process group.
- :func:`wrap` makes the data-parallel model: ``ddp`` (DistributedDataParallel) or ``fsdp``
  (FSDP2: ``fully_shard`` on every trunk block and the root, on an explicit 1-D device mesh).
  On gloo, FSDP2's reduce-scatter with ``ReduceOp.AVG`` silently sums instead of averaging
  (PyTorch issue 162338), so every FSDP module is told to use SUM reductions with explicit
  scaling (``set_force_sum_reduction_for_comms``); ``tests/test_train_distributed.py`` would
  catch a regression by comparing 1 and 2 processes.
- :func:`full_state` / :func:`load_full_state` move whole (unsharded) weights and optimizer
  state in and out, whatever the wrapping, through ``torch.distributed.checkpoint.state_dict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from onshore.errors import ValidationError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process without a process group
    owns_group: bool  # this code started the process group and ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> World:
    """Join torchrun's process group if there is one; pick the device (CUDA when present)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in ("cpu", "cuda"):
        raise ValidationError(f"--device {want!r}: use cpu or cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise ValidationError("--device cuda: no CUDA device here; use --device cpu")
    dev = torch.device("cuda", local) if want == "cuda" else torch.device("cpu")
    if want == "cuda":
        torch.cuda.set_device(dev)
    if size == 1:
        return World(0, 1, 0, dev, None, False)
    backend = "nccl" if want == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return World(dist.get_rank(), dist.get_world_size(), local, dev, backend, owns)


def teardown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled over the process group, which stays inside the site)."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=world.device if world.backend == "nccl" else None)
    return box[0]


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def all_reduce_sum(world: World, t: torch.Tensor) -> torch.Tensor:
    if world.size > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def wrap(net: nn.Module, world: World, strategy: str) -> nn.Module:
    """The module to call in the training step (``net`` itself in one process)."""
    if strategy not in STRATEGIES:
        raise ValidationError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if world.size == 1:
        return net
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,), mesh_dim_names=("dp",))
    for block in net.blocks:  # type: ignore[attr-defined]
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    if world.backend == "gloo":
        # PyTorch issue 162338: gloo's reduce-scatter with AVG sums; force SUM plus explicit scaling.
        for m in net.modules():
            if isinstance(m, FSDPModule):
                m.set_force_sum_reduction_for_comms(True)
    return net


def full_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole model and optimizer state on CPU, on rank 0 (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(net, optimizer, options=opts)


def load_full_state(net: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                    optim_state: dict[str, Any]) -> None:
    """Load whole states (every rank passes the same full dicts) into a possibly sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(net, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def to_full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP shard) as the whole tensor; a plain tensor as itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``ref`` (sharded the same way if ``ref`` is a DTensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.device), ref.device_mesh, ref.placements)
    return full.to(ref.device).clone()
