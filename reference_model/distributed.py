"""Data-parallel training under torchrun: PyTorch DDP, gloo on CPU and NCCL on CUDA, one global batch split.

    torchrun --standalone --nproc_per_node 2 -m attnbench.gpt train --batch-size 32 ...

Every rank draws the same global batch of `batch_size` sequences (the batch RNG is seeded alike everywhere)
and trains on its own contiguous slice of batch_size / world_size of them; DDP averages the gradients, so a
step equals the single-process step on the whole global batch (the mean loss over equal slices is the mean
of their means), up to float rounding. The optimizer (AdamW or Muon) then steps on identical averaged
gradients on every rank, so model, optimizer state and evaluation stay the same everywhere; only rank 0 logs
and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DataParallel:
    rank: int  # this process, 0 .. world_size - 1
    world_size: int  # processes sharing each global batch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch x (B, ...): (B / world_size, ...)."""
        if x.size(0) % self.world_size:
            raise ValueError(f"batch size {x.size(0)} must be divisible by the {self.world_size} data-parallel ranks")
        n = x.size(0) // self.world_size
        return x[self.rank * n : (self.rank + 1) * n]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DDP (gradients all-reduced in backward); its parameters stay those of `model`."""
        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a multi-process torchrun launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_torchrun(device: str) -> tuple[DataParallel, str]:
    """Join the torchrun process group (NCCL for a CUDA device, gloo otherwise); returns it and this rank's device
    (cuda -> cuda:LOCAL_RANK)."""
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return current(), device


def current() -> DataParallel | None:
    """The process group this process trains in, or None (single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return DataParallel(dist.get_rank(), dist.get_world_size())


def shutdown(wait: bool) -> None:
    """Leave the process group, if this process joined one; with `wait`, once every rank is there (a run that
    ended normally: rank 0 evaluates and saves after the last step, and a rank that tore gloo down while rank 0,
    which hosts the store, was still busy aborted under load: "terminate called without an active exception").
    After an error or a stop the others may never come, so it leaves at once."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
