"""The fused decoder's elementwise steps on CPU through the C++ extension (``csrc/decoder_ops.cpp``),
each beside the plain-torch formula it replaces (HF's arithmetic, the tests' reference).

``add_rms_norm``, ``rotary`` and ``silu_mul`` run the extension on CPU float32 / bfloat16 tensors
(one pass per row, rounding where torch rounds; a large op's rows split over ``threads`` threads of
torch's OpenMP team, None: torch's thread count) and the torch formula elsewhere (CUDA, float16, no
extension, inside a compiled graph, where inductor fuses the formula itself).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CPP_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def _loaded_extension():
    """The extension module if it is built with these ops (looked up once: the ops run 90 times a
    decode step of a 30-layer model, where an import statement per call was a visible cost)."""
    try:
        from tte_fast import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "add_rms_norm") else None


def _extension(*tensors: torch.Tensor):
    """The extension module where it takes ``tensors`` (else None)."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in CPP_DTYPES or torch.compiler.is_compiling():
        return None
    for t in tensors[1:]:
        if t.dtype != first.dtype or t.device != first.device:
            return None
    return _loaded_extension()


def _threads(threads: int | None) -> int:
    """Threads of torch's OpenMP team an op's rows may use (None: torch's thread count)."""
    return torch.get_num_threads() if threads is None else threads


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalised in float32, cast back, then scaled."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm(
    residual: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    threads: int | None = None,
):
    """``residual + delta`` (``delta`` None: ``residual``) and its RMSNorm: ``(sum, normed)``.
    On the extension's path the sum is written into ``residual`` (contiguous; it must not be read
    as the old value again), else it is a new tensor."""
    dim = residual.shape[-1]
    ops = _extension(residual, weight, *(() if delta is None else (delta,)))
    contiguous = residual.is_contiguous() and (delta is None or delta.is_contiguous())
    if (
        ops is None
        or not contiguous
        or weight.shape != (dim,)
        or (delta is not None and delta.shape != residual.shape)
    ):
        total = residual if delta is None else residual + delta
        return total, rms_norm_reference(total, weight, eps)
    out = torch.empty_like(residual)
    weight = weight.contiguous()  # held here: the extension reads it through a raw pointer
    ops.add_rms_norm(
        residual.data_ptr(), 0 if delta is None else delta.data_ptr(), weight.data_ptr(), out.data_ptr(),
        residual.numel() // dim, dim, eps, residual.dtype == torch.bfloat16, _threads(threads),
    )  # fmt: skip
    return residual, out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """``x [B, heads * d]`` (one token per row), ``cos / sin [B, d]`` -> ``[B, heads, 1, d]``."""
    rows = x.view(x.shape[0], heads, 1, -1)
    cos, sin = cos[:, None, None, :], sin[:, None, None, :]
    return rows * cos + rotate_half(rows) * sin


def rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, threads: int | None = None
) -> torch.Tensor:
    """HF's rotary embedding of one token per row: ``x [B, heads * d]`` (rows may be strided, e.g.
    the query columns of a fused ``[q; k; v]`` projection), ``cos / sin [B, d]`` -> a new contiguous
    ``[B, heads, 1, d]``."""
    batch, dim = x.shape[0], cos.shape[-1]
    ops = _extension(x, cos, sin)
    if (
        ops is None
        or x.dim() != 2
        or cos.shape != (batch, dim)
        or sin.shape != cos.shape
        or x.stride(-1) != 1
        or cos.stride() != sin.stride()
        or cos.stride(-1) != 1
        or x.shape[-1] != heads * dim
        or dim % 2
    ):
        return rotary_reference(x, cos, sin, heads)
    out = torch.empty(batch, heads, 1, dim, dtype=x.dtype)
    ops.rotary(
        x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), cos.stride(0), out.data_ptr(),
        batch, heads, dim, x.dtype == torch.bfloat16, _threads(threads),
    )  # fmt: skip
    return out


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gate_up: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` of ``gate_up = [gate | up]`` along the last dim."""
    ops = _extension(gate_up)
    if ops is None or not gate_up.is_contiguous() or gate_up.shape[-1] % 2:
        return silu_mul_reference(gate_up)
    width = gate_up.shape[-1] // 2
    out = gate_up.new_empty((*gate_up.shape[:-1], width))
    ops.silu_mul(
        gate_up.data_ptr(), out.data_ptr(), out.numel() // width, width, gate_up.dtype == torch.bfloat16,
        _threads(threads),
    )  # fmt: skip
    return out
