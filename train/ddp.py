"""Distributed data parallel under torchrun: one process a device, rank 0 writes everything."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from markguard.errors import MarkguardError


@dataclass
class Dist:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA); a no-op without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, device)
    import torch.distributed as td

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if torch.cuda.device_count() <= local:
            raise MarkguardError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s); lower --nproc_per_node")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not td.is_initialized():
        td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, device)


def shard_batches(order: list, batch: int, dist: Dist) -> list:
    """This rank's share of the global order: batches r, r+W, r+2W, … (each rank sees whole m-per-class batches)."""
    if not dist.active:
        return order
    out = []
    for b in range(dist.rank, len(order) // batch, dist.world):
        out.extend(order[b * batch : (b + 1) * batch])
    return out


def wrap(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    if not dist.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(dist.device).index] if dist.device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=ids)


def any_rank(flag: bool, dist: Dist) -> bool:
    """True on every rank when it is true on any: ranks must agree to stop, or the others hang in all-reduce."""
    if not dist.active:
        return flag
    import torch.distributed as td

    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def barrier(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as td

        td.barrier()


def teardown(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
