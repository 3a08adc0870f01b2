"""A linear layer whose CPU matmuls run on weights laid out once for the fastest kernel at hand.

At decode shapes (a few to a few dozen rows) torch's ``F.linear`` spends much of its time outside
the multiply: in float32 it calls MKL's SGEMM, which on some CPUs (AMD EPYC among them) runs at half
oneDNN's speed; in bfloat16 it calls oneDNN but lets it reorder the weight on every call. Packing
the weight once into oneDNN's blocked layout (``mkldnn._reorder_linear_weight``, what inductor's
weight prepacking does) and calling ``mkldnn._linear_pointwise`` measured, for a [M, 576] x
[576, 3072] projection on one AMD EPYC core: bfloat16 0.51 / 0.09 ms at M = 64 / 8 against
0.60 / 0.15 (results identical), float32 0.96 / 0.15 against 2.31 / 0.41.

On CPUs with AMX tiles, bfloat16 weights are packed instead for the extension's AMX kernel
(``csrc/amx_linear.cpp``), which runs up to ``AMX_ROWS`` rows: oneDNN's packed call costs about
14 us of set-up each time and read a step's weights at a fraction of the memory's speed (SmolLM2-135M's
121 step matmuls, 2-core Xeon: 15-17 ms at 1-16 rows and 23-25 ms at 64 with oneDNN, 10-12 ms and
19-20 ms with the kernel). Longer inputs (prefills) take ``F.linear``, which at thousands of rows
ran as fast as oneDNN's packed call or faster (a 4,700-row prefill: 7.5 against 14.0 ms for the
[576, 3072] projection). Elsewhere (CUDA, other dtypes, no oneDNN, inside a compiled graph) it is
``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tte_fast.kernels.decoder_ops_cpp import silu_mul

# Rows the oneDNN packed layout is tuned for (it serves any number of rows).
PACKED_ROWS_HINT = 64
PACKED_DTYPES = (torch.float32, torch.bfloat16)
# Most rows the AMX kernel takes (a pass over the weights for every 64 rows); more: F.linear. A step's
# 121 matmuls (SmolLM2-135M, 2-core Xeon): 31.8 / 42.8 / 68.8 ms at 96 / 128 / 192 rows on the kernel,
# 42.8 / 53.8 / 66.6 ms through F.linear (oneDNN's packed call, whose copy of the weights the
# kernel's replaces: 33.7 / 37.2 / 45.1 ms).
AMX_ROWS = 128


def _packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def amx_extension(weight: torch.Tensor):
    """The extension module where its AMX kernel takes this weight (a CPU bfloat16 ``[N, K]`` weight with
    N a multiple of 16 and K of 32, on a CPU with AMX tiles), else None."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or weight.dim() != 2:
        return None
    if weight.shape[0] % 16 or weight.shape[1] % 32:
        return None
    try:
        from tte_fast import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "amx_linear") and _C.amx_available() else None


def _interleaved(t: torch.Tensor) -> torch.Tensor:
    """``[gate; up]`` rows (or bias entries) reordered as 16-row blocks alternating gate and up."""
    half = t.shape[0] // 2
    return t.reshape(2, half // 16, 16, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


class PackedLinear:
    """``y = x W^T + b`` for ``weight [out, in]`` and an optional ``bias [out]``; ``gated``: SwiGLU's
    ``silu(gate) * up`` of that ``y = [gate | up]`` (``decoder_ops_cpp.silu_mul``), which the AMX
    kernel computes from its tiles (no ``y`` written and read back, no pass of its own)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False):
        self.weight, self.bias, self.gated = weight, bias, gated
        self.packed = self.amx = None
        extension = amx_extension(weight)
        whole_blocks = not gated or weight.shape[0] % 32 == 0  # gated: gate and up of whole 16-row blocks
        if extension is not None and whole_blocks and (bias is None or bias.dtype == weight.dtype):
            self._pack_amx(extension)
        elif weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES and _packing_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_ROWS_HINT)

    def _pack_amx(self, extension) -> None:
        source, bias = self.weight.detach(), self.bias
        if self.gated:
            source, bias = _interleaved(source), None if bias is None else _interleaved(bias.detach())
        self._extension, self._amx_bias = extension, None if bias is None else bias.detach().contiguous()
        self.amx = torch.empty(source.numel(), dtype=source.dtype)
        source = source.contiguous()
        extension.pack_amx_weight(source.data_ptr(), self.amx.data_ptr(), *source.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.amx is not None and x.dtype == self.weight.dtype and not torch.compiler.is_compiling():
            rows = x.numel() // x.shape[-1] if x.numel() else 0
            if 0 < rows <= AMX_ROWS and x.shape[-1] == self.weight.shape[1]:
                return self._amx_linear(x.contiguous(), rows)
        y = self._linear(x)
        return silu_mul(y) if self.gated else y

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or x.dtype != self.weight.dtype or torch.compiler.is_compiling():
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def _amx_linear(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        out_features = self.weight.shape[0] // (2 if self.gated else 1)
        out = x.new_empty(*x.shape[:-1], out_features)
        bias = 0 if self._amx_bias is None else self._amx_bias.data_ptr()
        self._extension.amx_linear(
            x.data_ptr(), self.amx.data_ptr(), bias, out.data_ptr(), rows, *self.weight.shape,
            torch.get_num_threads(), self.gated,
        )  # fmt: skip
        return out
