"""Decode attention over the slot cache in place: no copy of the busy slots' keys and values.

An eager engine step runs its linear layers on the busy slots only, but their keys and values sit
among every slot's in the cache. Gathering those rows for the attention copies them, every layer
and step (on CPU that copy was about a fifth of a step). Here each layer's cache ``update``
returns every slot's keys and values as a view, cut to the columns the busy slots use, with the
busy rows attached (``ROWS``); this attention function places the busy queries among zero ones and
runs transformers' SDPA attention over all slots (which packs a single query's grouped heads onto
the key heads instead of repeating the keys), whose bias keeps each slot to its own columns, then
keeps the busy rows. Idle slots cost one zero query each against their columns; nothing is copied.

On CUDA tensors it runs ``tte_fast.kernels.decode_attention`` instead (a Triton kernel: one program
per busy row and key head reads that slot's columns in place, so idle slots cost nothing). Each
slot's visible columns come from the bias: its zero entries, which the slot cache's bias puts on
columns ``0 .. position`` (a prefix). The CPU path is the SDPA one above.

``slot_attention_reference`` is the plain-torch reference it is tested against (gathered rows,
float64 softmax).
"""

from __future__ import annotations

import torch

SLOT_ATTENTION = "tte_fast_slot_attention"
# Attribute of the key view a slot cache returns: the slot of each query row (absent: all slots).
ROWS = "_tte_slot_rows"


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: ``query [B, H, 1, d]`` of the busy slots, ``key/value [S, H_kv, W, d]``
    of every slot, ``attention_mask`` an additive ``[S, 1, 1, W]`` bias -> ``[B, 1, H, d]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = getattr(key, ROWS, None)
    if query.is_cuda and attention_mask is not None and not dropout:
        from tte_fast.kernels import decode_attention

        # Rows and lengths are in range by construction (no device sync to check them per layer).
        lengths = visible_lengths(attention_mask)
        out = decode_attention(query, key, value, lengths, rows, scaling, check_values=False)
        return out, None
    if rows is not None:
        placed = query.new_zeros((key.shape[0], *query.shape[1:]))
        placed[rows] = query
        query = placed
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=False
    )
    return (out if rows is None else out[rows]), None


def visible_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each slot's visible columns ``[S]`` from a slot cache's ``[S, 1, 1, W]`` mask: its zero
    entries (additive bias) or True ones (boolean), a prefix ``0 .. position``."""
    bias = attention_mask[:, 0, 0, :]
    return (bias if bias.dtype == torch.bool else bias == 0).sum(-1)


def slot_attention_reference(query, key, value, bias, rows, scaling=None) -> torch.Tensor:
    """The busy slots' attention with their rows gathered, in float64: ``[B, 1, H, d]``."""
    groups = query.shape[1] // key.shape[1]
    k, v = (t[rows].double().repeat_interleave(groups, 1) for t in (key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (query.double() @ k.transpose(-1, -2)) * scale + bias[rows].double()
    return (scores.softmax(-1) @ v).transpose(1, 2)


def register() -> None:
    """Add the slot attention to transformers' registry (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SLOT_ATTENTION, slot_attention)
