"""Decode attention over a slot cache: one query per busy slot against that slot's own columns.

``decode_attention(query, key, value, lengths, rows=None, scaling=None, backend="auto")``:
``query [B, H, 1, d]`` holds the busy slots' queries, ``key/value [S, H_kv, W, d]`` every slot's
cache (views are fine: only strides are used, nothing is copied), ``rows [B]`` the slot of each
query (None: all slots, B == S), ``lengths [S]`` each slot's number of visible columns (its
position + 1: it attends to columns ``0 .. lengths - 1``). H is a multiple of H_kv (grouped-query
attention: query head h reads key head ``h // (H // H_kv)``). Returns ``[B, 1, H, d]`` in the
query's dtype, the layout transformers' attention functions return.

Backends: ``"triton"`` (``decode_attention_triton``: one program per busy row and key head, online
softmax in fp32; on CPU tensors only under ``TRITON_INTERPRET=1``), ``"cpp"`` (``decode_attention_cpp``:
the same algorithm in the C++ extension, CPU float32 / bfloat16), ``"torch"`` (the plain formula,
fp32, masked from ``lengths``), ``"auto"`` / None: Triton on CUDA, C++ on CPU where it applies,
torch elsewhere.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from .decode_attention_cpp import cpp_supported, decode_attention_cpp
from .validation import _shape, check_tensor

DECODE_BACKENDS = ("auto", "triton", "cpp", "torch")


def _check_index(name: str, t, size: int, device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if t.shape != (size,):
        raise ValueError(f"{name} must have shape [{size}], got {_shape(t)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but query is on {device}")


def check_decode_inputs(query, key, value, lengths, rows, scaling, check_values: bool = True):
    """Shapes, dtypes and devices; with ``check_values`` also rows in [0, S) and the busy rows'
    lengths in [1, W] (one device sync). Returns (rows as a tensor, scale)."""
    check_tensor("query", query, 4)
    check_tensor("key", key, 4)
    check_tensor("value", value, 4)
    if query.shape[2] != 1:
        raise ValueError(f"query must hold one token per row ([B, H, 1, d]), got shape {_shape(query)}")
    if value.shape != key.shape:
        raise ValueError(f"value shape {_shape(value)} does not match key shape {_shape(key)}")
    slots, kv_heads, width, head_dim = key.shape
    batch, heads = query.shape[:2]
    if query.shape[3] != head_dim:
        raise ValueError(f"query head_dim {query.shape[3]} does not match key's {head_dim}")
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key heads ({kv_heads})")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise ValueError(f"{name} dtype {t.dtype} does not match query dtype {query.dtype}")
        if t.device != query.device:
            raise ValueError(f"{name} is on {t.device} but query is on {query.device}")
    if rows is None:
        if batch != slots:
            raise ValueError(f"without rows, query's B ({batch}) must equal the number of slots S ({slots})")
        rows = torch.arange(slots, device=query.device)
    else:
        _check_index("rows", rows, batch, query.device)
    _check_index("lengths", lengths, slots, query.device)
    if scaling is None:
        scale = head_dim**-0.5
    elif isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not math.isfinite(scaling):
        raise ValueError(f"scaling must be a finite number or None, got {scaling!r}")
    else:
        scale = float(scaling)
    if check_values:
        busy = lengths[rows.clamp(0, slots - 1)]
        low, high, first, last = torch.stack([busy.min(), busy.max(), rows.min(), rows.max()]).tolist()
        if first < 0 or last >= slots:
            raise ValueError(f"rows must lie in [0, S={slots}), found {first if first < 0 else last}")
        if low < 1 or high > width:
            raise ValueError(
                f"lengths of the busy rows must lie in [1, W={width}], found {low if low < 1 else high}"
            )
    return rows, scale


def resolve_decode_backend(backend, query: torch.Tensor, key: torch.Tensor) -> str:
    device = query.device
    group = query.shape[1] // key.shape[1]
    cpp = key.dtype == query.dtype and cpp_supported(query.dtype, device, query.shape[-1], group)
    if backend is None or backend == "auto":
        if device.type == "cuda":
            return "triton" if importlib.util.find_spec("triton") else "torch"
        return "cpp" if cpp else "torch"
    if backend not in DECODE_BACKENDS:
        raise ValueError(f"backend must be one of {DECODE_BACKENDS} or None, got {backend!r}")
    if backend == "cpp" and not cpp:
        raise ValueError(
            f"backend='cpp' takes CPU float32 / bfloat16 tensors with the C++ extension built, got "
            f"{query.dtype} on {device}"
        )
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {device}); on CPU set TRITON_INTERPRET=1 "
            "before importing triton, or use backend='torch'"
        )
    return backend


def decode_attention_torch(query, key, value, lengths, rows, scale: float) -> torch.Tensor:
    """The plain formula over the busy rows in fp32 (grouped heads against their key head)."""
    batch, heads, _, head_dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    k, v = key[rows].float(), value[rows].float()  # [B, H_kv, W, d]
    q = query.float().reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, H_kv, G, W]
    hidden = torch.arange(width, device=query.device)[None, :] >= lengths[rows][:, None]
    scores = scores.masked_fill(hidden[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v  # [B, H_kv, G, d]
    return out.reshape(batch, 1, heads, head_dim).to(query.dtype)


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: torch.Tensor,
    rows: torch.Tensor | None = None,
    scaling: float | None = None,
    backend: str | None = "auto",
    check_values: bool = True,
) -> torch.Tensor:
    """See the module docstring. ``check_values=False`` skips the value checks of ``rows`` and
    ``lengths`` (their device sync), for callers whose indices are in range by construction."""
    rows, scale = check_decode_inputs(query, key, value, lengths, rows, scaling, check_values)
    backend = resolve_decode_backend(backend, query, key)
    if backend == "cpp":
        row_list = rows.tolist()
        visible = lengths.tolist()
        return decode_attention_cpp(query, key, value, row_list, [visible[r] for r in row_list], scale)
    if backend == "triton":
        from .decode_attention_triton import decode_attention_triton

        return decode_attention_triton(query, key, value, lengths, rows, scale)
    return decode_attention_torch(query, key, value, lengths, rows, scale)
