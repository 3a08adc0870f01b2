"""Decode attention over the slot cache in place: no copy of the busy slots' keys and values.

An eager engine step runs its linear layers on the busy slots only, but their keys and values sit
among every slot's in the cache. Gathering those rows for the attention copies them, every layer
and step (on CPU that copy was about a fifth of a step). Here each layer's cache ``update``
returns every slot's keys and values as a view, cut to the columns the busy slots use, with the
busy rows attached (``ROWS``) and, in an eager step, the host lists of each busy row's slot and
visible columns (``VISIBLE``). On CPU the C++ extension's kernel
(``tte_fast.kernels.decode_attention_cpp``, on the threads of torch's OpenMP team) then reads each
busy slot's own columns in place, so neither idle slots nor unwritten columns cost anything.
Without it (float16, a compiled step's fixed shape) the attention places the busy queries among
zero ones and runs one small matmul per slot and key head over all slots (a query's grouped heads
packed onto their key head instead of repeating the keys), with transformers' eager arithmetic
(scores in the input dtype, softmax in float32), whose bias keeps each slot to its own columns,
then keeps the busy rows.

On CUDA tensors it runs ``tte_fast.kernels.decode_attention``'s Triton kernel (one program per busy
row and key head reads that slot's columns in place). Each slot's visible columns come from the
bias: its zero entries, which the slot cache's bias puts on columns ``0 .. position`` (a prefix).

``attend`` is the entry point of both decoders: transformers' layers reach it through the
registered attention function ``slot_attention``, the fused decoder (``tte_fast.runtime.fused_decoder``)
calls it directly. On an eager CPU step the fused decoder first tries ``step_attention``: the C++
kernel straight from its ``[q; k; v]`` rows, rotating each query and key head, writing the key and
value into the cache and attending in one pass (no rotary op, cache write or attention call of its
own per layer), its checks made once for the step's layers.

``slot_attention_reference`` is the plain-torch reference it is tested against (gathered rows,
float64 softmax).
"""

from __future__ import annotations

import torch

from tte_fast.kernels.decode_attention_cpp import (
    StepAttention,
    avx512_applies,
    cpp_supported,
    decode_attention_cpp,
)

SLOT_ATTENTION = "tte_fast_slot_attention"
# Attribute of the key view a slot cache returns: the slot of each query row (absent: all slots).
ROWS = "_tte_slot_rows"
# Attribute of a windowed step's key view: host lists (slot of each query row, its visible columns).
VISIBLE = "_tte_slot_visible"
# Without its AVX-512 path, bfloat16 steps use the C++ kernel below this share of visible columns in
# the slot grid (measured: per visible column its portable loops cost about 3.5x what the bf16
# matmuls cost per column of the grid).
CPP_BF16_SHARE = 0.3


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: ``query [B, H, 1, d]`` of the busy slots, ``key/value [S, H_kv, W, d]``
    of every slot, ``attention_mask`` an additive ``[S, 1, 1, W]`` bias -> ``[B, 1, H, d]``."""
    if dropout:
        raise ValueError(f"the slot attention is for decoding: dropout must be 0, got {dropout}")
    return attend(query, key, value, attention_mask, scaling), None


def attend(query, key, value, bias, scaling=None) -> torch.Tensor:
    """The busy slots' decode attention over every slot's keys and values in place (the rows of
    ``key``'s ``ROWS`` attribute, all slots without it): ``[B, 1, H, d]``."""
    rows = getattr(key, ROWS, None)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if query.is_cuda:
        from tte_fast.kernels import decode_attention

        # Rows and lengths are in range by construction (no device sync to check them per layer).
        lengths = visible_lengths(bias)
        return decode_attention(query, key, value, lengths, rows, scale, check_values=False)
    visible = getattr(key, VISIBLE, None)
    if (
        visible is not None
        and key.dtype == query.dtype
        and cpp_supported(query.dtype, query.device, query.shape[-1], query.shape[1] // key.shape[1])
        and _kernel_pays(query.dtype, query.shape[-1], key, visible[1])
    ):
        return decode_attention_cpp(query, key, value, *visible, scale)
    if rows is not None:
        placed = query.new_zeros((key.shape[0], *query.shape[1:]))
        placed[rows] = query
        query = placed
    out = grouped_attention(query, key, value, bias, scale)
    return out if rows is None else out[rows]


def step_attention(qkv, cos, sin, heads: int, cache) -> StepAttention | None:
    """A fused decoder's step attention for every layer of this step of the slot cache ``cache`` (its
    current step's busy slots), from the first layer's ``[q; k; v]`` rows ``[B, (H + 2 H_kv) d]``
    and the rotary rows ``cos / sin [B, d]``: called with a layer's rows, cache layer and scale, it
    writes that layer's keys and values into the cache and returns its attention ``[B, 1, H, d]``.
    None where the C++ kernel does not take the step (the caller then runs rotary, ``cache.update``
    and ``attend`` in turn): a fixed-shape or compiled step, another device or dtype, the kernel's
    limits, or a bfloat16 step it would not pay for."""
    visible = cache.step_columns()
    keys, values = cache.keys[0], cache.values[0]
    if visible is None or torch.compiler.is_compiling():
        return None
    head_dim, group = keys.shape[-1], heads // keys.shape[1]
    if qkv.dtype != keys.dtype or cos.dtype != qkv.dtype:
        return None
    if not cpp_supported(qkv.dtype, qkv.device, head_dim, group, kernel="decode_step_attention"):
        return None
    if cos.shape != (qkv.shape[0], head_dim) or sin.stride() != cos.stride() or cos.stride(-1) != 1:
        return None  # rotary tables of another layout: the rotary op's torch formula
    if not _kernel_pays(qkv.dtype, head_dim, keys, visible[1]):
        return None
    return StepAttention(qkv, cos, sin, heads, keys, values, *visible)


def _kernel_pays(dtype, head_dim: int, key, lengths: list[int]) -> bool:
    """Whether the C++ kernel beats the grouped matmuls over every slot and column: in float32 always,
    and on its AVX-512 path (about 3.5x the bfloat16 matmuls' speed at SmolLM2-135M's decode shape,
    64 slots of 200 columns, one thread each); on its portable loops in bfloat16, whose matmuls run on
    the CPU's bf16 dot-product units while the kernel computes in float32, only when the busy rows'
    visible columns are under ``CPP_BF16_SHARE`` of the grid."""
    if dtype != torch.bfloat16 or avx512_applies(head_dim):
        return True
    return sum(lengths) < CPP_BF16_SHARE * key.shape[0] * key.shape[2]


def grouped_attention(query, key, value, bias, scale: float) -> torch.Tensor:
    """One query per slot against its own key head's columns, with HF's eager arithmetic (scores and
    weighted sum in the input dtype, softmax in float32): ``query [S, H, 1, d]``, ``key/value
    [S, H_kv, W, d]`` (any strides over W), ``bias [S, 1, 1, W]`` -> ``[S, 1, H, d]``.

    A query's grouped heads are packed onto their key head, so each slot and key head is one small
    matmul over its keys read in place (no repeated keys, no copy); at decode shapes this runs
    several times faster on CPU than PyTorch's fused SDPA kernel, which is built for long queries."""
    slots, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(slots, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scale + bias  # [S, H_kv, G, W]
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).reshape(slots, 1, heads, dim)


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
