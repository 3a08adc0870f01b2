"""Last-token pooling + L2 norm in Triton: one program per batch row reads only the pooled token's
D values (any strides, any float dtype), normalises in fp32 and writes [B, D] float32. Backward
writes the normalisation's gradient into the pooled positions of a zero [B, T, D] gradient."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .indexing import last_token_positions

EPS = 1e-12  # F.normalize's default: x / max(||x||, eps), so a zero vector maps to zero


@triton.jit
def _pool_normalize_fwd_kernel(
    hidden_ptr, index_ptr, out_ptr, inv_norm_ptr, D, stride_b, stride_t, stride_d, eps,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    row = hidden_ptr + b * stride_b + tl.load(index_ptr + b) * stride_t
    sum_sq = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(row + dd * stride_d, mask=dd < D, other=0.0).to(tl.float32)
        sum_sq += x * x
    inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(sum_sq, axis=0)), eps)
    tl.store(inv_norm_ptr + b, inv_norm)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(row + dd * stride_d, mask=dd < D, other=0.0).to(tl.float32)
        tl.store(out_ptr + b * D + dd, x * inv_norm, mask=dd < D)


@triton.jit
def _pool_normalize_bwd_kernel(
    grad_out_ptr, out_ptr, inv_norm_ptr, index_ptr, grad_hidden_ptr, D, stride_b, stride_t, eps,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """grad_x = (g - y * <y, g>) / ||x|| when ||x|| > eps, else g / eps (the clamp is flat there)."""
    b = tl.program_id(0).to(tl.int64)
    inv_norm = tl.load(inv_norm_ptr + b)
    projection = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        y = tl.load(out_ptr + b * D + dd, mask=dd < D, other=0.0)
        g = tl.load(grad_out_ptr + b * D + dd, mask=dd < D, other=0.0)
        projection += y * g
    # inv_norm == 1 / eps exactly when the norm was clamped.
    dot = tl.where(inv_norm < 1.0 / eps, tl.sum(projection, axis=0), 0.0)
    row = grad_hidden_ptr + b * stride_b + tl.load(index_ptr + b) * stride_t
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        y = tl.load(out_ptr + b * D + dd, mask=dd < D, other=0.0)
        g = tl.load(grad_out_ptr + b * D + dd, mask=dd < D, other=0.0)
        grad = (g - y * dot) * inv_norm
        tl.store(row + dd, grad.to(grad_hidden_ptr.dtype.element_ty), mask=dd < D)


def _block_d(d: int) -> int:
    return min(triton.next_power_of_2(d), 4096)


class PoolNormalizeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, index):
        batch, _, d = hidden.shape
        out = torch.empty(batch, d, dtype=torch.float32, device=hidden.device)
        inv_norm = torch.empty(batch, dtype=torch.float32, device=hidden.device)
        _pool_normalize_fwd_kernel[(batch,)](
            hidden, index, out, inv_norm, d, *hidden.stride(), EPS, BLOCK_D=_block_d(d)
        )
        ctx.save_for_backward(out, inv_norm, index)
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        out, inv_norm, index = ctx.saved_tensors
        shape, dtype = ctx.hidden_meta
        grad_hidden = torch.zeros(shape, dtype=dtype, device=out.device)
        grad_out = grad_out.float().contiguous()
        _pool_normalize_bwd_kernel[(shape[0],)](
            grad_out, out, inv_norm, index, grad_hidden, shape[2], grad_hidden.stride(0),
            grad_hidden.stride(1), EPS, BLOCK_D=_block_d(shape[2]),
        )  # fmt: skip
        return grad_hidden, None


def pool_normalize_triton(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return PoolNormalizeTriton.apply(hidden, last_token_positions(attention_mask).contiguous())
