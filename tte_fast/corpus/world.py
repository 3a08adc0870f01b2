"""The processes of a corpus job and the few ways they agree.

Outside torch.distributed and without ``WORLD_SIZE > 1`` in the environment, a world of one. Under
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) a gloo process group is
created on entry and destroyed on exit (:func:`tte_fast.distributed.process_group`); when the caller
has already initialised a group (NCCL included), a gloo group over the same processes carries the
job's small messages, so no tensor needs a device.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from tte_fast.distributed import process_group


class World:
    def __init__(self):
        self.rank, self.size, self.group = 0, 1, None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> World:
        self._stack.enter_context(process_group("gloo"))
        if dist.is_available() and dist.is_initialized():
            self.rank, self.size = dist.get_rank(), dist.get_world_size()
            if dist.get_backend() != "gloo":
                self.group = dist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.group)

    def agree(self, check, what: str = "to start") -> None:
        """Run ``check()`` on every process; if it raised anywhere, raise everywhere (the failing
        process its own error, the others a pointer to it) instead of leaving some waiting."""
        error = None
        try:
            check()
        except Exception as err:  # re-raised below, after the others have heard of it
            error = err
        if self.size > 1:
            flags = torch.zeros(self.size)
            flags[self.rank] = error is not None
            dist.all_reduce(flags, group=self.group)
            if error is None and flags.any():
                failed = int(flags.nonzero()[0].item())
                raise RuntimeError(f"process {failed} of the corpus job failed {what} (see its error)")
        if error is not None:
            raise error

    def sum(self, stats: dict) -> dict:
        """Sums over processes of the numeric values of ``stats``; ``seconds_max`` is the longest
        ``seconds`` (the processes run side by side)."""
        keys = sorted(k for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
        longest = torch.tensor([float(stats.get("seconds", 0.0))], dtype=torch.float64)
        if self.size > 1:
            dist.all_reduce(values, group=self.group)
            dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=self.group)
        out = {k: (v if isinstance(stats[k], float) else int(v)) for k, v in zip(keys, values.tolist())}
        out["seconds_max"] = longest.item()
        return out

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out
