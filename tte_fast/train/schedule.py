"""Which records each step trains on: a pure function of the seed, so a resumed run sees the same data.

Every step draws one dataset of the mixture (probability weight / sum of weights) and takes the next
global batch from that dataset's stream: epoch after epoch of seeded permutations, each cut into
whole global batches (the remainder is dropped, so no batch holds a record twice). All processes
build the same schedule; process r trains on slice r of each global batch, so one process with the
concatenated batch sees exactly what several processes see together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tte_fast.train.records import DataError


@dataclass
class Schedule:
    datasets: np.ndarray  # [steps] index of the dataset each step draws from
    indices: np.ndarray  # [steps, global batch] record indices within that dataset

    def rank_slice(self, step: int, rank: int, per_process: int) -> tuple[int, list[int]]:
        """(dataset index, record indices) of process ``rank``'s batch at ``step``."""
        rows = self.indices[step, rank * per_process : (rank + 1) * per_process]
        return int(self.datasets[step]), rows.tolist()


def build_schedule(
    sizes: list[int], weights: list[float], global_batch: int, steps: int, seed: int, names=None
) -> Schedule:
    names = names or [str(i) for i in range(len(sizes))]
    for name, size in zip(names, sizes):
        if size < global_batch:
            raise DataError(
                f"dataset {name!r} has {size} records, fewer than the global batch of {global_batch} "
                "(batch_size x processes): each step's batch comes from one dataset"
            )
    probabilities = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    choices = np.random.default_rng([seed, 0]).choice(len(sizes), size=steps, p=probabilities)
    indices = np.empty((steps, global_batch), dtype=np.int64)
    streams = [_Stream(size, global_batch, seed, d) for d, size in enumerate(sizes)]
    for step, d in enumerate(choices):
        indices[step] = streams[d].next_batch()
    return Schedule(choices.astype(np.int64), indices)


class _Stream:
    """Whole batches from consecutive seeded permutations of one dataset."""

    def __init__(self, size: int, batch: int, seed: int, dataset: int):
        self.size, self.batch, self.seed, self.dataset = size, batch, seed, dataset
        self.epoch, self.position, self.order = 0, 0, self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, self.dataset, epoch]).permutation(self.size)

    def next_batch(self) -> np.ndarray:
        if self.position + self.batch > self.size:
            self.epoch += 1
            self.position, self.order = 0, self._permutation(self.epoch)
        out = self.order[self.position : self.position + self.batch]
        self.position += self.batch
        return out
