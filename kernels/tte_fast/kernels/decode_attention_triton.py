"""Decode attention over a slot cache in Triton: one program per (busy row, kv head) reads that
slot's keys and values in place through their strides (a view cut from a longer cache is fine),
one block of columns at a time up to the slot's length, and keeps an online softmax in fp32 for
all the query heads of the group at once (the keys are read once per group, never repeated).

The products are broadcasts and sums, not ``tl.dot``: one query row per head is far below
``tl.dot``'s 16-row minimum, and the interpreter's ``tl.dot`` is wrong on bf16."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, rows_ptr, lengths_ptr, scale_log2,
    sq_b, sq_h, sq_d, sk_s, sk_h, sk_w, sk_d, sv_s, sv_h, sv_w, sv_d, so_b, so_h,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    slot = tl.load(rows_ptr + b).to(tl.int64)
    length = tl.load(lengths_ptr + slot).to(tl.int32)

    g = tl.arange(0, BLOCK_G)
    dd = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + g
    g_ok = g < GROUP
    d_ok = dd < HEAD_DIM
    q = tl.load(
        q_ptr + b * sq_b + heads[:, None] * sq_h + dd[None, :] * sq_d,
        mask=g_ok[:, None] & d_ok[None, :], other=0.0,
    ).to(tl.float32)  # fmt: skip
    q = q * scale_log2  # scores in log2 units: exp2 below

    m = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    k_base = k_ptr + slot * sk_s + kv_head * sk_h
    v_base = v_ptr + slot * sv_s + kv_head * sv_h
    # length >= 1, so every block holds at least one visible column: m stays finite.
    for n0 in range(0, length, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        visible = cols < length
        kv_mask = visible[:, None] & d_ok[None, :]
        k = tl.load(k_base + cols[:, None] * sk_w + dd[None, :] * sk_d, mask=kv_mask, other=0.0)
        scores = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)  # [G, N]
        scores = tl.where(visible[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        rescale = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * rescale + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * sv_w + dd[None, :] * sv_d, mask=kv_mask, other=0.0)
        acc = acc * rescale[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        m = m_new
    out = acc / l[:, None]
    tl.store(
        out_ptr + b * so_b + heads[:, None] * so_h + dd[None, :],
        out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :],
    )  # fmt: skip


def _block_n(block_g: int, block_d: int) -> int:
    """Columns per block: about 8K fp32 products per step (registers), between 16 and 128."""
    return max(16, min(128, triton.next_power_of_2(max(1, 8192 // (block_g * block_d)))))


def decode_attention_triton(query, key, value, lengths, rows, scale: float) -> torch.Tensor:
    """``query [B, H, 1, d]``, ``key/value [S, H_kv, W, d]`` (any strides), ``lengths [S]``,
    ``rows [B]`` (int) -> ``[B, 1, H, d]`` in the query's dtype. Inputs already checked."""
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    out = torch.empty(batch, 1, heads, head_dim, dtype=query.dtype, device=query.device)
    block_g = triton.next_power_of_2(group)
    block_d = triton.next_power_of_2(head_dim)
    _decode_attention_kernel[(batch, kv_heads)](
        query, key, value, out, rows, lengths, scale * LOG2E,
        query.stride(0), query.stride(1), query.stride(3), *key.stride(), *value.stride(),
        out.stride(0), out.stride(2),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_G=block_g, BLOCK_N=_block_n(block_g, block_d), BLOCK_D=block_d,
    )  # fmt: skip
    return out
