"""CPU decode attention through the C++ extension (``csrc/decode_attention.cpp``).

One task per busy row and key head reads that slot's first ``length`` columns of keys and values in
place through their strides (float32 scores and online softmax, like the Triton kernel on CUDA), with
the GIL released. Its plain-torch twin is ``decode_attention_torch``
beside it in ``decode_attention.py``; the tests compare both with a float64 reference.
"""

from __future__ import annotations

import torch

CPP_DTYPES = (torch.float32, torch.bfloat16)
MAX_HEAD_DIM = 256
MAX_GROUP = 16


def cpp_supported(dtype, device, head_dim: int, group: int, kernel: str = "decode_attention") -> bool:
    """Whether the extension's ``kernel`` takes tensors of ``dtype`` on ``device`` with this head dim
    and query heads per key head (CPU, float32 / bfloat16, its size limits, the extension built)."""
    if torch.device(device).type != "cpu" or dtype not in CPP_DTYPES:
        return False
    if head_dim > MAX_HEAD_DIM or group > MAX_GROUP:
        return False
    try:
        from tte_fast import _C
    except ImportError:
        return False
    return hasattr(_C, kernel)


def avx512_applies(head_dim: int) -> bool:
    """Whether the kernel runs its AVX-512 path for this head dim (a multiple of 16, the CPU has
    AVX-512F, the path not switched off); it then reads bfloat16 at about memory speed."""
    from tte_fast import _C

    return head_dim % 16 == 0 and _C.avx512_enabled()


def decode_attention_cpp(
    query, key, value, rows: list[int], lengths: list[int], scale: float, threads: int | None = None
) -> torch.Tensor:
    """``query [B, H, 1, d]``, ``key/value [S, H_kv, W, d]`` (any strides but a unit last one),
    ``rows`` and ``lengths`` host lists of B ints (each row's slot and visible columns) ->
    ``[B, 1, H, d]``. The extension checks sizes, rows and lengths again (a ValueError, never an
    out-of-bounds read).

    ``threads`` None (default): torch's thread count, run on the team of the OpenMP runtime torch
    loaded (its workers spin-wait on the other cores between torch ops, so threads of a pool of our
    own would fight them: a decode step ran 1.2-1.3x slower), one thread where none is found. An
    explicit count runs on threads of the extension's own."""
    from tte_fast import _C

    team = threads is None and _C.openmp_team_available()
    threads = (torch.get_num_threads() if team else 1) if threads is None else threads
    batch, heads, _, head_dim = query.shape
    slots, kv_heads, width, _ = key.shape
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    out = torch.empty(batch, 1, heads, head_dim, dtype=query.dtype, device=query.device)
    _C.decode_attention(
        query.data_ptr(), key.data_ptr(), value.data_ptr(), out.data_ptr(), query.dtype == torch.bfloat16,
        heads, kv_heads, head_dim, slots, width,
        [query.stride(0), query.stride(1)], list(key.stride()[:3]), list(value.stride()[:3]),
        [out.stride(0), out.stride(2)], rows, lengths, scale, threads, team,
    )  # fmt: skip
    return out


def decode_step_attention_cpp(
    qkv, cos, sin, heads: int, key, value, rows: list[int], lengths: list[int], scale: float,
    threads: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """A decode step's attention straight from its fused projection: ``qkv [B, (H + 2 H_kv) d]`` (rows
    may be strided: the ``[q; k; v]`` output), ``cos / sin [B, d]`` (None: no rotary) -> ``[B, 1, H,
    d]``. Each row's query and key heads are rotated as ``decoder_ops_cpp.rotary`` rounds, its key and
    value written into ``key / value [S, H_kv, W, d]`` (the slot cache's layer, in place) at column
    ``lengths[b] - 1`` of slot ``rows[b]``, then the row attends over columns ``0 .. lengths[b] - 1``:
    what ``rotary``, the cache's column write and ``decode_attention_cpp`` do in turn, in one pass
    whose tasks each own a (row, key head). ``threads`` as in ``decode_attention_cpp``. A step's
    layers share all but ``qkv``, the cache layer and ``scale``: ``StepAttention`` checks the rest
    once."""
    return StepAttention(qkv, cos, sin, heads, key, value, rows, lengths, threads)(qkv, key, value, scale)


class StepAttention:
    """``decode_step_attention_cpp`` for every layer of one decode step: the arguments the layers
    share (rotary rows, slots and lengths, head counts, the layouts of ``qkv`` and the cache's
    layers, threads) checked once, here; a call passes the layer's ``qkv``, ``key``, ``value`` and
    ``scale``, which must have the layouts checked (a ValueError otherwise). Made for each of
    SmolLM2-135M's 30 layers, the checks cost about 0.6 ms of a 27 ms bf16 step at batch 16."""

    def __init__(
        self, qkv, cos, sin, heads: int, key, value, rows: list[int], lengths: list[int],
        threads: int | None = None,
    ):  # fmt: skip
        from tte_fast import _C

        batch = qkv.shape[0]
        slots, kv_heads, width, head_dim = key.shape
        columns = (heads + 2 * kv_heads) * head_dim
        if qkv.dim() != 2 or qkv.shape[1] != columns or qkv.stride(1) != 1:
            raise ValueError(
                f"qkv must be [B, (heads + 2 kv_heads) * head_dim] = [B, {columns}] with contiguous rows, "
                f"got {tuple(qkv.shape)} strides {qkv.stride()}"
            )
        if (cos is None) != (sin is None):
            raise ValueError("cos and sin come together")
        if cos is not None and (
            cos.shape != (batch, head_dim)
            or sin.shape != cos.shape
            or cos.stride() != sin.stride()
            or cos.stride(1) != 1
        ):
            raise ValueError(
                f"cos and sin must be [B, head_dim] = [{batch}, {head_dim}], got {tuple(cos.shape)}"
            )
        tensors = (qkv, key, value) if cos is None else (qkv, key, value, cos, sin)
        if (
            any(t.dtype != qkv.dtype or t.device.type != "cpu" for t in tensors)
            or qkv.dtype not in CPP_DTYPES
        ):
            raise ValueError(
                f"CPU float32 / bfloat16 tensors of one dtype are required, got {[t.dtype for t in tensors]}"
            )
        if key.stride(-1) != 1 or value.stride(-1) != 1 or value.shape != key.shape:
            raise ValueError("key and value must be [S, H_kv, W, d] alike with a unit last stride")
        if len(rows) != batch:
            raise ValueError(f"rows must name a slot for each of the {batch} rows, got {len(rows)}")
        self._extension = _C
        self._tables = (cos, sin)  # held: the extension reads them through raw pointers
        self._layout = _layout(qkv, key, value)
        team = threads is None and _C.openmp_team_available()
        threads = (torch.get_num_threads() if team else 1) if threads is None else threads
        self._out_shape = (batch, 1, heads, head_dim)
        no_table = cos is None
        tables = (0, 0, 0) if no_table else (cos.data_ptr(), sin.data_ptr(), cos.stride(0))
        self._before_cache = (qkv.stride(0), *tables)
        self._after_out = (
            qkv.dtype == torch.bfloat16, heads, kv_heads, head_dim, slots, width, list(key.stride()[:3]),
            list(value.stride()[:3]), [heads * head_dim, head_dim], rows, lengths,
        )  # fmt: skip
        self._threads = (threads, team)

    def __call__(self, qkv, key, value, scale: float) -> torch.Tensor:
        """Layer attention of ``qkv`` onto the cache layer ``key / value`` (its step column written)."""
        layout = _layout(qkv, key, value)
        if layout != self._layout:
            raise ValueError(
                f"qkv, key, value as (shape, strides, dtype, device) {layout}, checked as {self._layout}"
            )
        out = torch.empty(self._out_shape, dtype=qkv.dtype)
        self._extension.decode_step_attention(
            qkv.data_ptr(), *self._before_cache, key.data_ptr(), value.data_ptr(), out.data_ptr(),
            *self._after_out, scale, *self._threads,
        )  # fmt: skip
        return out


def _layout(*tensors: torch.Tensor) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)
