"""GradCache's memory is set by the chunk size, not the batch size: measured as the peak bytes of the
tensors autograd holds for backward at any moment of a step (saved-tensor hooks, exact and
deterministic, unlike RSS on a shared machine)."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from tte_fast.gradcache import gradcache_step

CHUNK = 4


class _Saved:
    """What autograd keeps in place of a saved tensor; freed with the graph that saved it."""

    def __init__(self, tensor):
        self.tensor = tensor


class SavedTensorMeter:
    """Live and peak bytes of the tensors saved for backward inside the block."""

    def __init__(self):
        self.live = self.peak = 0

    def _pack(self, tensor):
        size = tensor.numel() * tensor.element_size()
        box = _Saved(tensor)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, size)
        return box

    def _free(self, size):
        self.live -= size

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda box: box.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def encoder_and_batch(n: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 16))
    encode = lambda x: F.normalize(model(x), dim=-1)  # noqa: E731
    return model, encode, torch.randn(n, 32), torch.randn(n, 32)


def peak_saved_bytes(n: int, cached: bool) -> int:
    model, encode, queries, targets = encoder_and_batch(n)
    with SavedTensorMeter() as meter:
        if cached:
            gradcache_step(encode, queries, targets, chunk_size=CHUNK)
        else:  # plain autograd over the whole batch, for scale
            q, t = encode(queries), encode(targets)
            F.cross_entropy(q @ t.T / 0.02, torch.arange(n)).backward()
    assert meter.live == 0  # every graph was freed by the end of the step
    return meter.peak


def test_peak_memory_is_set_by_the_chunk_not_the_batch():
    small, large = peak_saved_bytes(2 * CHUNK, cached=True), peak_saved_bytes(16 * CHUNK, cached=True)
    assert small == large
    # The meter sees batch-sized graphs: plain autograd over the large batch holds many times more.
    assert peak_saved_bytes(16 * CHUNK, cached=False) > 4 * large
