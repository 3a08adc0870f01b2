"""The process group of a torchrun job, and the few collectives the cached step needs, for uneven
per-rank row counts.

:func:`process_group` is the one place a job starts (and ends) torch.distributed. The collectives
move detached tensors: the cached step applies gradients by hand, so nothing here needs autograd.
They work with gloo (CPU tensors) and NCCL (CUDA tensors) alike.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn


@contextlib.contextmanager
def process_group(backend: str | None = None):
    """The default process group for the block, under torchrun (``WORLD_SIZE`` > 1) when none is
    set up yet: started here and destroyed after. ``backend=None`` is NCCL when CUDA is there (each
    process on ``cuda:LOCAL_RANK``), else gloo. Yields whether this call started the group; outside
    torchrun, or in a group the caller owns, it changes nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        yield False
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        yield True
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where small bookkeeping tensors of a collective live: NCCL needs CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_mode(module) -> str:
    """How a module's gradients are synchronised: ``"ddp"``, ``"fsdp"`` (FSDP2) or ``"local"``."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel):
        return "ddp"
    if isinstance(module, FullyShardedDataParallel):
        raise TypeError(
            "FullyShardedDataParallel (FSDP1) is not supported by gradcache_step: shard the model with "
            "torch.distributed.fsdp.fully_shard (FSDP2) instead"
        )
    if isinstance(module, nn.Module):
        from torch.distributed.fsdp import FSDPModule

        if isinstance(module, FSDPModule):
            return "fsdp"
    return "local"


def row_counts(n: int) -> list[int]:
    """Every rank's ``n``, in rank order."""
    _, size = world()
    if size == 1:
        return [n]
    count = torch.tensor([n], device=collective_device(), dtype=torch.long)
    counts = [torch.empty_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    return [int(c.item()) for c in counts]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenate every rank's ``x`` along dim 0, in rank order; also the per-rank row counts.

    Ranks may hold different numbers of rows (all other dimensions must agree): the counts are
    exchanged first and the rows padded to the largest count, as ``all_gather`` needs equal sizes.
    """
    _, size = world()
    x = x.detach().contiguous()
    if size == 1:
        return x, [x.shape[0]]
    rows = row_counts(x.shape[0])
    longest = max(rows)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x)
    return torch.cat([p[:r] for p, r in zip(parts, rows)]), rows


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``x`` over ranks (in place, and returned)."""
    if world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@contextlib.contextmanager
def fail_together():
    """Ranks agree after the block whether it succeeded everywhere: a rank whose block raised tells
    the others, which raise too instead of waiting forever in the next collective."""
    if world()[1] == 1:
        yield
        return
    failed = torch.zeros(1, device=collective_device())
    try:
        yield
    except BaseException:
        failed.fill_(1)
        dist.all_reduce(failed)
        raise
    dist.all_reduce(failed)
    if failed.item():
        raise RuntimeError("gradcache_step failed on another process of this step (see its error)")
