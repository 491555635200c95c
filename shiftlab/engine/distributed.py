"""Data parallelism across processes (``torchrun``): who writes, how batches are shared, how results gather.

``torchrun --nproc_per_node=N -m shiftlab.cli train ...`` starts N copies of the same command; each
reads its rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, set by torchrun) and the
trainer joins a process group (NCCL on CUDA, gloo on CPU). ``data.batch_size`` stays the *global*
batch: every rank draws the same global batch from the same seeded sampler and keeps its contiguous
part, so N processes see exactly the batches one process would, and DistributedDataParallel's
gradient average equals the gradient of the global batch's mean loss (for models without BatchNorm;
BatchNorm normalises each rank's part by its own statistics). Evaluation sets are split into N
contiguous parts whose counts are summed and whose outputs are gathered in rank order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, Sampler

from ..data.decoded import shard_bounds

__all__ = ["DistEnv", "ShardedBatchSampler", "TrainingStep", "shard_bounds"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the data-parallel processes (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> DistEnv:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """Join the process group once (torchrun's rendezvous variables say where)."""
        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world)

    def close(self) -> None:
        """Leave the process group at the end of a run, so that torchrun's processes exit cleanly."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_in_order(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (first dimension may differ), concatenated in rank order, on every rank."""
        if not self.enabled:
            return tensor
        parts: list = [None] * self.world
        dist.all_gather_object(parts, tensor.cpu())
        return torch.cat(parts).to(tensor.device)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. whether a callback stopped the run)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank's contiguous part of every batch of ``batches``: same global batches as one process draws."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            yield batch[lo:hi]


class TrainingStep(nn.Module):
    """``forward`` = the method's ``training_step``, so DistributedDataParallel, which synchronises the
    gradients of what its ``forward`` computes, wraps a method without the method knowing of it."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, source, target, progress: float):
        return self.method.training_step(source, target, progress)
