"""Distributed data parallel helpers: the same code runs under ``torchrun --nproc_per_node=N`` and alone.

Under torchrun (``WORLD_SIZE`` set) :func:`init_distributed` starts a process group — NCCL when CUDA is
used, gloo on the CPU — and pins each rank to its local GPU. Without torchrun everything is a no-op with
rank 0 of world 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this DistInfo's init_distributed started the process group (cleanup ends it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    return torch.device(spec)


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment, start the process group if needed and choose the device. A group that is
    already running (started by a caller that runs several trainings, e.g. ``pdenets compare``) is used, and left
    running by :func:`cleanup`: starting a gloo group again after destroying one can hang when the ranks arrive
    at different times."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev, owns)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, info: DistInfo):
    if not (info.distributed and dist.is_initialized()):
        return obj
    lst = [obj]
    dist.broadcast_object_list(lst, src=0)
    return lst[0]


def cleanup(info: DistInfo) -> None:
    """End the process group if ``info``'s :func:`init_distributed` started it."""
    if info.distributed and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
