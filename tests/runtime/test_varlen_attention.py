"""Packed (block-diagonal causal) attention against the dense float64 reference, fresh inputs each
run: PyTorch SDPA per prompt on any device (outputs and gradients), xformers' layout on CPU through a
stand-in kernel that reads the real ``BlockDiagonalCausalMask``, and the real xformers and flash-attn
kernels on a GPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import assert_rel_close

from tte_fast.runtime import varlen_attention as va

# Attention rounds once per matmul and softmax: a few eps of the dtype, relative to the largest value.
TOLERANCE = {torch.float32: 64 * torch.finfo(torch.float32).eps, torch.bfloat16: 4 * 2**-8}
LENGTHS = [[5], [1, 7, 3], [4, 1, 1, 9], [16, 2]]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def fresh_seed():
    print(f"torch seed {torch.seed()}")


def _positions(lengths: list[int], device="cpu") -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])[None].to(device)


def _qkv(lengths, heads, kv_heads, dtype, device="cpu", dim=8):
    total = sum(lengths)
    make = lambda h: torch.randn(1, h, total, dim, dtype=dtype, device=device)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads)


def _bounds(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_varlen_equals_the_reference_with_gradients(lengths, heads, kv_heads, dtype):
    q, k, v = (t.requires_grad_() for t in _qkv(lengths, heads, kv_heads, dtype))
    scaling = 0.3
    out, _ = va.sdpa_varlen_attention(None, q, k, v, None, scaling=scaling, position_ids=_positions(lengths))
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = va.block_diagonal_reference(*leaves, _bounds(lengths), scaling)
    assert out.shape == (1, sum(lengths), heads, q.shape[-1]) and out.dtype == dtype
    assert_rel_close(out, want, TOLERANCE[dtype], "output")
    grad = torch.randn_like(want)
    out.backward(grad.to(dtype))
    want.backward(grad)
    for name, got, ref in zip("qkv", (q, k, v), leaves):
        assert_rel_close(got.grad, ref.grad, 4 * TOLERANCE[dtype], f"d{name}")


def test_the_reference_keeps_prompts_apart():
    """Independent of the packing: the reference on two packed prompts equals it on each alone."""
    q, k, v = _qkv([3, 4], 2, 2, torch.float64)
    both = va.block_diagonal_reference(q, k, v, _bounds([3, 4]))
    first = va.block_diagonal_reference(q[:, :, :3], k[:, :, :3], v[:, :, :3], _bounds([3]))
    second = va.block_diagonal_reference(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], _bounds([4]))
    torch.testing.assert_close(both, torch.cat([first, second], dim=1))


def test_bounds_come_from_positions_restarting_at_zero():
    assert va.cu_seqlens_from_positions(_positions([2, 1, 3])).tolist() == [0, 2, 3, 6]
    with pytest.raises(ValueError, match="start every sequence at 0"):
        va.cu_seqlens_from_positions(torch.tensor([[1, 2, 0]]))
    with pytest.raises(ValueError, match="position ids"):
        va.sdpa_varlen_attention(None, *_qkv([2], 2, 2, torch.float32), None)


def test_a_cache_with_earlier_keys_is_refused():
    q, k, v = _qkv([3], 2, 2, torch.float32)
    with pytest.raises(ValueError, match="empty cache"):
        va.sdpa_varlen_attention(None, q, torch.cat([k, k], 2), v, None, position_ids=_positions([3]))


def _xformers_stand_in(q, k, v, attn_bias, scale=None):
    """xformers' memory_efficient_attention semantics in plain torch, for its 5-D layout
    ``[B, M, groups, heads per group, K]`` and a real attn_bias (materialised)."""
    bias = attn_bias.materialize((q.shape[1], k.shape[1]), dtype=torch.float64)
    scores = torch.einsum("bmghk,bnghk->bghmn", q.double(), k.double()) * (scale or q.shape[-1] ** -0.5)
    weights = (scores + bias).softmax(-1)
    return torch.einsum("bghmn,bnghk->bmghk", weights, v.double()).to(q.dtype)


@pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="needs xformers")
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)])
def test_xformers_layout_and_mask_on_cpu(monkeypatch, lengths, heads, kv_heads):
    """Grouped heads, sequence lengths and the block-diagonal mask as xformers receives them; the
    kernel (CUDA only) is stood in for by its plain-torch semantics."""
    import xformers.ops

    monkeypatch.setattr(xformers.ops, "memory_efficient_attention", _xformers_stand_in)
    q, k, v = _qkv(lengths, heads, kv_heads, torch.float32)
    out, _ = va.xformers_attention(None, q, k, v, None, scaling=0.25, position_ids=_positions(lengths))
    want = va.block_diagonal_reference(q, k, v, _bounds(lengths), 0.25)
    assert_rel_close(out, want, TOLERANCE[torch.float32], "xformers layout")


@cuda
@pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="needs xformers")
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_xformers_kernel_on_gpu(heads, kv_heads):
    lengths = [37, 1, 128, 64]
    q, k, v = _qkv(lengths, heads, kv_heads, torch.bfloat16, "cuda", dim=64)
    out, _ = va.xformers_attention(None, q, k, v, None, position_ids=_positions(lengths, "cuda"))
    want = va.block_diagonal_reference(q, k, v, _bounds(lengths).cuda())
    assert_rel_close(out, want, TOLERANCE[torch.bfloat16], "xformers on GPU")


@cuda
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_transformers_flash_varlen_on_packed_positions(heads, kv_heads):
    """transformers' flash_attention_2 on a packed row (no mask, restarting positions): what the
    flash_varlen prefill runs."""
    from transformers.integrations.flash_attention import flash_attention_forward

    class Module(torch.nn.Module):
        is_causal, layer_idx = True, 0

        def __init__(self):
            super().__init__()
            from transformers import PretrainedConfig

            self.config = PretrainedConfig()
            self.config._attn_implementation = "flash_attention_2"

    lengths = [37, 1, 128, 64]
    q, k, v = _qkv(lengths, heads, kv_heads, torch.bfloat16, "cuda", dim=64)
    out, _ = flash_attention_forward(Module(), q, k, v, None, position_ids=_positions(lengths, "cuda"))
    want = va.block_diagonal_reference(q, k, v, _bounds(lengths).cuda())
    assert_rel_close(out, want, TOLERANCE[torch.bfloat16], "flash-attn varlen")
