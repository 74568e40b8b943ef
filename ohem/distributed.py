"""Multi-process training helpers (``torchrun``): all of them are no-ops in a single process.

Under ``torchrun --nproc_per_node K -m ohem train ...`` each process trains on its share of every
batch (OHEM mines per image, so each rank mines its own images); DistributedDataParallel averages
the gradients. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device_name: str) -> Dist:
    """The process group of a ``torchrun`` launch (joined once), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (for logging)."""
    if not d.active:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / d.world for k, v in zip(keys, t.tolist())}


def all_true(d: Dist, flag: bool) -> bool:
    if not d.active:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather(d: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()
