"""The decoder's static KV caches, and the bounded set of shapes its compiled step sees.

A compiled (or CUDA-graph) decode step is specialised to its input shapes: batch rows and cache
length. Eager decoding rounds cache lengths up to a multiple of ``LENGTH_BUCKET``; compiled decoding
also pads the batch, and both round up to powers of two (cache lengths as ``LENGTH_BUCKET * 2**k``),
so a run with batches of at most ``B`` rows and sequences of at most ``T`` tokens creates at most
``graph_bound(B, T)`` graphs: for example 4 x 6 = 24 for B = 8 and T = 2048.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import torch
from transformers import StaticCache

LENGTH_BUCKET = 64
# Rows a compiled step is sized for when the decoder is built (the limit grows if a batch is larger).
DEFAULT_MAX_BATCH = 64


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def eager_length(total: int) -> int:
    """Cache columns for ``total`` positions in eager decoding: the next multiple of LENGTH_BUCKET."""
    return -(-total // LENGTH_BUCKET) * LENGTH_BUCKET


def compiled_length(total: int) -> int:
    """Cache columns for ``total`` positions in compiled decoding: LENGTH_BUCKET times a power of two."""
    return LENGTH_BUCKET * _next_power_of_two(-(-total // LENGTH_BUCKET))


def compiled_batch(rows: int) -> int:
    """Rows of a compiled step for a batch of ``rows``: the next power of two."""
    return _next_power_of_two(rows)


def graph_bound(max_batch: int, max_length: int) -> int:
    """How many (batch, cache length) shapes compiled decoding can meet up to these sizes."""
    batches = int(math.log2(compiled_batch(max_batch))) + 1
    lengths = int(math.log2(compiled_length(max_length) // LENGTH_BUCKET)) + 1
    return batches * lengths


class CompiledShapes:
    """Raises dynamo's recompile limit to the decoder's graph bound and warns if a shape falls past it
    (dynamo then runs that shape eagerly, silently)."""

    def __init__(self, max_length: int, max_batch: int = DEFAULT_MAX_BATCH):
        self.max_length = max_length
        self.seen: set[tuple[int, int]] = set()
        self.warned = False
        self.allow(max_batch)

    def allow(self, max_batch: int) -> None:
        config = torch._dynamo.config
        bound = graph_bound(max_batch, self.max_length)
        if config.recompile_limit < bound:
            config.recompile_limit = bound

    def record(self, key: tuple[int, int]) -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        if key[0] > DEFAULT_MAX_BATCH:
            self.allow(key[0])
        if len(self.seen) > torch._dynamo.config.recompile_limit and not self.warned:
            self.warned = True
            warnings.warn(
                f"the compiled decode step has met {len(self.seen)} shapes, more than "
                f"torch._dynamo.config.recompile_limit={torch._dynamo.config.recompile_limit}: new shapes "
                "run eagerly (slower). Raise the limit or keep batch sizes and lengths steadier.",
                RuntimeWarning,
                stacklevel=3,
            )


class CachePool:
    """Static KV caches by (batch, length), most recently used last. ``capacity`` caches stay
    allocated (None: all, as compiled steps replay on the same buffers); ``release`` frees them."""

    def __init__(self, config, capacity: int | None):
        self.config = config
        self.capacity = capacity
        self.caches: OrderedDict[tuple[int, int], StaticCache] = OrderedDict()

    def get(self, batch: int, length: int) -> StaticCache:
        key = (batch, length)
        cache = self.caches.pop(key, None)
        if cache is None:
            if self.capacity is not None:
                while len(self.caches) >= self.capacity:
                    self.caches.popitem(last=False)
            cache = StaticCache(config=self.config, max_cache_len=length)
        else:
            cache.reset()
        self.caches[key] = cache
        return cache

    def release(self) -> None:
        self.caches.clear()

    def __len__(self) -> int:
        return len(self.caches)
