"""Causal attention over packed sequences (one row, no padding), for padding-free prefill.

Prompts packed into one row ``[1, T]`` restart their positions at 0; each token attends causally to
the earlier tokens of its own prompt only (a block-diagonal causal mask). The sequence bounds come
from the text position ids that transformers hands every attention function, as its own
flash-attn path derives them (``cu_seqlens``: where positions restart at 0).

Two functions are registered in transformers' ``AttentionInterface`` (``register()``), and the
packed prefill switches a model's text attention to one of them for its forward:

- ``tte_fast_sdpa_varlen``: PyTorch SDPA over each prompt's block (any device; exact, no padding);
- ``tte_fast_xformers``: xformers' memory-efficient attention with a ``BlockDiagonalCausalMask``
  (CUDA; optional package).

flash-attn needs no function of ours: transformers' ``flash_attention_2`` already runs
``flash_attn_varlen_func`` on packed position ids. ``block_diagonal_reference`` is the plain-torch
reference all three are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SDPA_VARLEN = "tte_fast_sdpa_varlen"
XFORMERS = "tte_fast_xformers"


def cu_seqlens_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """int32 ``[n + 1]`` sequence bounds of one packed row: a sequence starts where its position is 0."""
    if position_ids is None:
        raise ValueError("packed attention needs the text position ids of the packed row")
    positions = position_ids.reshape(-1)
    starts = (positions == 0).nonzero().view(-1)
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("packed position ids must start every sequence at 0 (the first one too)")
    end = torch.tensor([positions.numel()], device=positions.device)
    return torch.cat([starts, end]).to(torch.int32)


def _packed_bounds(position_ids: torch.Tensor) -> list[int]:
    """Sequence bounds as ints, computed once per forward: every layer gets the same position tensor,
    and reading the bounds to the host is a device sync. They are kept on that tensor itself, so
    models and threads never share them."""
    if position_ids is None:
        raise ValueError("packed attention needs the text position ids of the packed row")
    bounds = getattr(position_ids, "_tte_packed_bounds", None)
    if bounds is None:
        bounds = cu_seqlens_from_positions(position_ids).tolist()
        position_ids._tte_packed_bounds = bounds
    return bounds


def _check_packed(query: torch.Tensor, key: torch.Tensor) -> None:
    if query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        raise ValueError(
            f"packed attention takes one packed row with as many keys as queries (an empty cache), "
            f"got queries {tuple(query.shape)} and keys {tuple(key.shape)}"
        )


def sdpa_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: ``query [1, H, T, d]``, ``key/value [1, H_kv, T, d]`` -> ``[1, T, H, d]``."""
    _check_packed(query, key)
    bounds = _packed_bounds(kwargs.get("position_ids"))
    gqa = query.shape[1] != key.shape[1]
    blocks = [
        F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(blocks, dim=2).transpose(1, 2).contiguous(), None


def xformers_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function over xformers' block-diagonal causal mask; grouped-query heads go in
    xformers' 5-D ``[B, T, groups, heads per group, d]`` layout (keys broadcast, not copied)."""
    from xformers.ops import memory_efficient_attention
    from xformers.ops.fmha.attn_bias import BlockDiagonalCausalMask

    _check_packed(query, key)
    bounds = _packed_bounds(kwargs.get("position_ids"))
    bias = BlockDiagonalCausalMask.from_seqlens([b - a for a, b in zip(bounds[:-1], bounds[1:])])
    _, heads, length, dim = query.shape
    groups = key.shape[1]
    q = query.transpose(1, 2).reshape(1, length, groups, heads // groups, dim)
    k, v = (t.transpose(1, 2)[:, :, :, None].expand(-1, -1, -1, heads // groups, -1) for t in (key, value))
    out = memory_efficient_attention(q, k, v, attn_bias=bias, scale=scaling)
    return out.reshape(1, length, heads, dim), None


def block_diagonal_reference(query, key, value, cu_seqlens, scaling=None) -> torch.Tensor:
    """Plain-torch reference: softmax attention over the whole packed row with a dense block-diagonal
    causal mask, in float64; returns ``[1, T, H, d]``."""
    length = query.shape[2]
    seq = torch.repeat_interleave(
        torch.arange(len(cu_seqlens) - 1), (cu_seqlens[1:] - cu_seqlens[:-1]).long().cpu()
    ).to(query.device)
    index = torch.arange(length, device=query.device)
    allowed = (seq[:, None] == seq[None, :]) & (index[None, :] <= index[:, None])
    groups = query.shape[1] // key.shape[1]
    q = query.double()
    k, v = (t.double().repeat_interleave(groups, 1) for t in (key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (q @ k.transpose(-1, -2)) * scale
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2)


def register() -> None:
    """Add the packed attention functions to transformers' registry (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
    AttentionInterface.register(XFORMERS, xformers_attention)
