"""Decode attention over the slot cache in place (tte_fast.runtime.slot_attention): the busy slots'
attention equals a gathered float64 reference, and a step's keys and values are views of the cache
over the columns the busy slots use (nothing copied)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tte_fast.kernels.decode_attention_cpp import avx512_applies
from tte_fast.runtime import slot_attention as slot_attention_module
from tte_fast.runtime.slot_attention import ROWS, VISIBLE, slot_attention, slot_attention_reference
from tte_fast.runtime.slot_cache import WIDTH_STEP, SlotCache

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("kernel", [True, False], ids=["cpp", "grouped-matmuls"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_busy_slots_attend_as_a_gathered_reference(seed, dtype, kernel, monkeypatch):
    """Through the C++ kernel (eager CPU steps) and through the grouped matmuls it falls back to."""
    if not kernel:
        monkeypatch.setattr(slot_attention_module, "cpp_supported", lambda *_: False)
    gen = torch.Generator().manual_seed(seed)
    slots, heads, kv_heads, dim, length = 6, 4, 2, 8, 400  # a window under a third of it: a view
    cache = SlotCache(2, slots, kv_heads, dim, length, dtype, "cpu")
    for layer in range(2):
        cache.keys[layer].copy_(torch.randn(cache.keys[layer].shape, generator=gen))
        cache.values[layer].copy_(torch.randn(cache.values[layer].shape, generator=gen))
    lengths = torch.randint(0, 100, (slots,), generator=gen).tolist()
    for slot, n in enumerate(lengths):
        cache.positions[slot], cache.host_positions[slot] = n, n
    busy = sorted(torch.randperm(slots, generator=gen)[:4].tolist())
    cache.select(busy, windowed=True)
    new_k, new_v = (torch.randn(len(busy), kv_heads, 1, dim, generator=gen, dtype=dtype) for _ in range(2))
    keys, values = cache.update(new_k, new_v, 1)
    width = -(-(max(lengths[i] for i in busy) + 1) // WIDTH_STEP) * WIDTH_STEP
    assert keys.shape == (slots, kv_heads, width, dim) and not keys.is_contiguous()
    # Views of the cache itself: the step copies no slot's keys or values.
    assert keys.untyped_storage().data_ptr() == cache.keys[1].untyped_storage().data_ptr()
    assert values.untyped_storage().data_ptr() == cache.values[1].untyped_storage().data_ptr()
    assert getattr(keys, ROWS).tolist() == busy
    assert getattr(keys, VISIBLE) == (busy, [lengths[i] + 1 for i in busy])
    query = torch.randn(len(busy), heads, 1, dim, generator=gen, dtype=dtype)
    bias = cache.attention_bias(dtype)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)  # as HF's attention
    got, _ = slot_attention(module, query, keys, values, bias, scaling=dim**-0.5)
    want = slot_attention_reference(query, keys, values, bias, torch.tensor(busy), scaling=dim**-0.5)
    assert got.shape == (len(busy), 1, heads, dim)
    torch.testing.assert_close(got.double(), want, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    # The new columns went to each busy slot's own position.
    for row, slot in enumerate(busy):
        assert torch.equal(cache.keys[1][slot, :, lengths[slot]], new_k[row, :, 0])


def test_a_wide_window_on_cpu_is_the_whole_contiguous_length():
    """On CPU a strided window costs the attention a copy: past a third of the slot length the step
    attends over the whole length (contiguous, the bias hiding the unwritten columns)."""
    cache = SlotCache(1, 3, 2, 8, 3 * WIDTH_STEP, torch.float32, "cpu")
    for slot, n in enumerate([5, 70, 10]):
        cache.positions[slot], cache.host_positions[slot] = n, n
    cache.select([0, 2], windowed=True)  # their columns fit one step of width
    keys, _ = cache.update(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8), 0)
    assert keys.shape[2] == WIDTH_STEP and not keys.is_contiguous()
    cache.select([0, 1], windowed=True)  # 71 columns: two steps, more than a third
    keys, _ = cache.update(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8), 0)
    assert keys.shape[2] == cache.length and keys.is_contiguous()
    assert cache.attention_bias(torch.float32).shape[-1] == cache.length


@pytest.mark.parametrize(
    "dtype, lengths, dim, kernel",
    [
        (torch.float32, [64, 64, 64], 8, True),  # float32: always the kernel
        (torch.bfloat16, [3, 5, 2], 8, True),  # a sparse bf16 step: 10 of 3 x 64 columns visible
        (torch.bfloat16, [64, 60, 64], 8, False),  # a dense one on the portable loops: the matmuls
        (torch.bfloat16, [64, 60, 64], 16, "avx512"),  # the kernel where its AVX-512 path runs
    ],
)
def test_the_cpp_kernel_runs_where_it_pays(dtype, lengths, dim, kernel, monkeypatch):
    """Eager CPU steps route to the C++ kernel in float32, on its AVX-512 path, and in bfloat16 below
    CPP_BF16_SHARE of the slot grid; either way the output equals the gathered reference."""
    if kernel == "avx512":
        kernel = avx512_applies(dim)
    calls = []
    real = slot_attention_module.decode_attention_cpp
    monkeypatch.setattr(
        slot_attention_module, "decode_attention_cpp", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    cache = SlotCache(1, 3, 2, dim, WIDTH_STEP, dtype, "cpu")
    cache.keys[0].normal_()
    cache.values[0].normal_()
    for slot, n in enumerate(lengths):
        cache.positions[slot], cache.host_positions[slot] = n - 1, n - 1
    cache.select(None, windowed=True)
    new = [torch.randn(3, 2, 1, dim, dtype=dtype) for _ in range(2)]
    keys, values = cache.update(*new, 0)
    query = torch.randn(3, 4, 1, dim, dtype=dtype)
    bias = cache.attention_bias(dtype)
    out, _ = slot_attention(None, query, keys, values, bias, scaling=dim**-0.5)
    assert bool(calls) == kernel
    want = slot_attention_reference(query, keys, values, bias, torch.arange(3), scaling=dim**-0.5)
    torch.testing.assert_close(out.double(), want, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
