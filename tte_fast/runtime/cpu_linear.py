"""A linear layer whose CPU matmuls run on oneDNN with the weight reordered once, not per call.

At decode shapes (a few to a few dozen rows) torch's ``F.linear`` spends much of its time outside
the multiply: in float32 it calls MKL's SGEMM, which on some CPUs (AMD EPYC among them) runs at half
oneDNN's speed; in bfloat16 it calls oneDNN but lets it reorder the weight on every call. Packing
the weight once into oneDNN's blocked layout (``mkldnn._reorder_linear_weight``, what inductor's
weight prepacking does) and calling ``mkldnn._linear_pointwise`` measured, for a [M, 576] x
[576, 3072] projection on one AMD EPYC core: bfloat16 0.51 / 0.09 ms at M = 64 / 8 against
0.60 / 0.15 (results identical), float32 0.96 / 0.15 against 2.31 / 0.41. Elsewhere (CUDA, other
dtypes, no oneDNN, inside a compiled graph) it is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows the packed layout is tuned for (it serves any number of rows).
PACKED_ROWS_HINT = 64
PACKED_DTYPES = (torch.float32, torch.bfloat16)


def _packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear:
    """``y = x W^T + b`` for ``weight [out, in]`` and an optional ``bias [out]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES and _packing_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_ROWS_HINT)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or torch.compiler.is_compiling() or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
