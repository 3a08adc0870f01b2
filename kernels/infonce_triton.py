"""Tiled InfoNCE in Triton (flash-attention style): the Nq x Nc logits never exist in memory.

Forward: one program per query block streams over candidate blocks, keeping an online log-sum-exp
and the positive logit; it stores only lse[Nq] and pos[Nq]. Backward recomputes each logits tile
from q and c, turns it into dS = (softmax - one_hot) * g / (t * Nq) with the stored lse, and
accumulates dq = dS @ c (one program per query block) and dc = dS.T @ q (one program per candidate
block). D can be large (1536 and more), so every matmul loops over D in BLOCK_D chunks and each
program accumulates its own gradient rows in an fp32 buffer: no atomics, deterministic.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Sizes that only bound loops and masks: specialising on them (== 1, % 16) would compile a new
# variant for every batch shape. D and the row strides stay specialised: alignment enables wide loads.
_SIZES_ONLY = ["Nq", "Nc", "size_class"]


@triton.jit
def _load_tile(ptr, rows, row_ok, stride, dd, d_ok, UPCAST: tl.constexpr):
    """[len(rows), len(dd)] tile of a row-major matrix, zero outside; fp32 when UPCAST."""
    tile = tl.load(
        ptr + rows[:, None] * stride + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
    )
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _logits_tile(
    q_ptr, c_ptr, rows, cols, row_ok, col_ok, D, stride_q, stride_c, scale,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """[BLOCK_Q, BLOCK_C] tile of q @ c.T * scale, accumulated in fp32 over D chunks."""
    acc = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        qt = _load_tile(q_ptr, rows, row_ok, stride_q, dd, d_ok, UPCAST)
        ct = _load_tile(c_ptr, cols, col_ok, stride_c, dd, d_ok, UPCAST)
        acc = tl.dot(qt, tl.trans(ct), acc, input_precision=PRECISION)
    return acc * scale


@triton.jit(do_not_specialize=_SIZES_ONLY)
def _infonce_fwd_kernel(
    q_ptr, c_ptr, labels_ptr, lse_ptr, pos_ptr, Nq, Nc, D, stride_q, stride_c, scale, size_class,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < Nq
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    row_max = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    sum_exp = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    positive = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for c0 in range(0, Nc, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        col_ok = cols < Nc
        logits = _logits_tile(
            q_ptr, c_ptr, rows, cols, row_ok, col_ok, D, stride_q, stride_c, scale,
            BLOCK_Q, BLOCK_C, BLOCK_D, UPCAST, PRECISION,
        )  # fmt: skip
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        positive += tl.sum(tl.where(cols[None, :] == label[:, None], logits, 0.0), axis=1)
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        row_max = new_max
    tl.store(lse_ptr + rows, row_max + tl.log(sum_exp), mask=row_ok)
    tl.store(pos_ptr + rows, positive, mask=row_ok)


@triton.jit
def _grad_logits_tile(
    q_ptr, c_ptr, labels_ptr, lse_ptr, rows, cols, row_ok, col_ok, D, stride_q, stride_c,
    scale, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Unscaled dS tile = softmax - one_hot(label), zero outside the matrix. The tiny factor
    g / (t * Nq) is applied after the matmul, so a half-precision tile does not underflow."""
    logits = _logits_tile(
        q_ptr, c_ptr, rows, cols, row_ok, col_ok, D, stride_q, stride_c, scale,
        BLOCK_Q, BLOCK_C, BLOCK_D, UPCAST, PRECISION,
    )  # fmt: skip
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    probs = tl.exp(logits - lse[:, None])
    grad = tl.where(cols[None, :] == label[:, None], probs - 1.0, probs)
    return tl.where(row_ok[:, None] & col_ok[None, :], grad, 0.0)


@triton.jit(do_not_specialize=_SIZES_ONLY)
def _infonce_bwd_dq_kernel(
    q_ptr, c_ptr, labels_ptr, lse_ptr, grad_scale_ptr, dq_ptr, Nq, Nc, D, stride_q, stride_c, scale,
    size_class,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dq[rows] = sum over candidate blocks of dS @ c; dq is fp32 [Nq, D], zero-initialised."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < Nq
    grad_scale = tl.load(grad_scale_ptr)
    for c0 in range(0, Nc, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        col_ok = cols < Nc
        grad = _grad_logits_tile(
            q_ptr, c_ptr, labels_ptr, lse_ptr, rows, cols, row_ok, col_ok, D, stride_q,
            stride_c, scale, BLOCK_Q, BLOCK_C, BLOCK_D, UPCAST, PRECISION,
        )  # fmt: skip
        if not UPCAST:
            grad = grad.to(c_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            ct = _load_tile(c_ptr, cols, col_ok, stride_c, dd, d_ok, UPCAST)
            out = dq_ptr + rows[:, None] * D + dd[None, :]
            out_ok = row_ok[:, None] & d_ok[None, :]
            acc = tl.load(out, mask=out_ok, other=0.0)
            update = tl.dot(grad, ct, input_precision=PRECISION)
            tl.store(out, acc + update * grad_scale, mask=out_ok)


@triton.jit(do_not_specialize=_SIZES_ONLY)
def _infonce_bwd_dc_kernel(
    q_ptr, c_ptr, labels_ptr, lse_ptr, grad_scale_ptr, dc_ptr, Nq, Nc, D, stride_q, stride_c, scale,
    size_class,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dc[cols] = sum over query blocks of dS.T @ q; dc is fp32 [Nc, D], zero-initialised."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < Nc
    grad_scale = tl.load(grad_scale_ptr)
    for q0 in range(0, Nq, BLOCK_Q):
        rows = q0 + tl.arange(0, BLOCK_Q).to(tl.int64)
        row_ok = rows < Nq
        grad = _grad_logits_tile(
            q_ptr, c_ptr, labels_ptr, lse_ptr, rows, cols, row_ok, col_ok, D, stride_q,
            stride_c, scale, BLOCK_Q, BLOCK_C, BLOCK_D, UPCAST, PRECISION,
        )  # fmt: skip
        grad_t = tl.trans(grad)
        if not UPCAST:
            grad_t = grad_t.to(q_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            qt = _load_tile(q_ptr, rows, row_ok, stride_q, dd, d_ok, UPCAST)
            out = dc_ptr + cols[:, None] * D + dd[None, :]
            out_ok = col_ok[:, None] & d_ok[None, :]
            acc = tl.load(out, mask=out_ok, other=0.0)
            update = tl.dot(grad_t, qt, input_precision=PRECISION)
            tl.store(out, acc + update * grad_scale, mask=out_ok)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs(shapes) -> list:
    return [
        triton.Config({"BLOCK_Q": bq, "BLOCK_C": bc, "BLOCK_D": bd}, num_warps=w, num_stages=st)
        for bq, bc, bd, w, st in shapes
    ]


# GPU tile candidates (BLOCK_Q, BLOCK_C, BLOCK_D, warps, stages), tuned once per (D, size class,
# dtypes). The backward kernels favour a long inner dimension (BLOCK_C for dq, BLOCK_Q for dc): it
# is the K of each gradient update, so it sets how often the fp32 gradient rows are re-read.
_HALF = {
    "fwd": [(128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 4)],
    "dq": [(64, 128, 64, 4, 3), (64, 256, 64, 8, 2), (128, 128, 64, 8, 3)],
    "dc": [(128, 64, 64, 4, 3), (256, 64, 64, 8, 2), (128, 128, 64, 8, 3)],
}
# fp32 uses exact (IEEE) dots: TF32 would cost ~3 decimal digits of the loss and gradients.
_FP32 = {name: [(64, 64, 32, 4, 2), (32, 64, 32, 4, 2)] for name in ("fwd", "dq", "dc")}
# The interpreter: small tiles, one config (autotuning several fails there), fp32 dots (its bf16
# dot is wrong).
_INTERPRETER_META = dict(BLOCK_Q=16, BLOCK_C=16, BLOCK_D=32)

_KERNELS = {"fwd": _infonce_fwd_kernel, "dq": _infonce_bwd_dq_kernel, "dc": _infonce_bwd_dc_kernel}
_RESET = {"fwd": None, "dq": ["dq_ptr"], "dc": ["dc_ptr"]}  # accumulators zeroed between tuning runs
_TUNED = {
    (name, family): triton.autotune(
        configs=_configs(table[name]),
        key=["D", "size_class"],
        reset_to_zero=_RESET[name],
        cache_results=True,  # tuning results persist on disk: later processes skip the search
    )(kernel)
    for name, kernel in _KERNELS.items()
    for family, table in (("half", _HALF), ("fp32", _FP32))
}


# Below this many logits a problem takes well under a millisecond: tuning would cost more than it
# saves, so the first candidate runs untuned.
AUTOTUNE_MIN_LOGITS = 1 << 22


def _launch(name: str, rows: int, block: str, nq: int, nc: int, *args) -> None:
    """Launch kernel `name` over `rows` rows in tiles of meta[block]. args are the kernel's runtime
    arguments up to `scale` (args[0] is q); `size_class` and the meta-parameters are added here."""
    if _interpreting():
        grid = (triton.cdiv(rows, _INTERPRETER_META[block]),)
        _KERNELS[name][grid](*args, 0, **_INTERPRETER_META, UPCAST=True, PRECISION="ieee")
        return
    fp32 = args[0].dtype == torch.float32
    flags = dict(UPCAST=fp32, PRECISION="ieee" if fp32 else "tf32")
    if nq * nc < AUTOTUNE_MIN_LOGITS:
        block_q, block_c, block_d, warps, stages = (_FP32 if fp32 else _HALF)[name][0]
        meta = dict(BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_D=block_d, num_warps=warps, num_stages=stages)
        _KERNELS[name][(triton.cdiv(rows, meta[block]),)](*args, 0, **meta, **flags)
        return
    size_class = (nq * nc).bit_length() // 4  # retune only when the problem grows ~16x
    grid = lambda meta: (triton.cdiv(rows, meta[block]),)
    _TUNED[(name, "fp32" if fp32 else "half")][grid](*args, size_class, **flags)


def _prepare(q: torch.Tensor, c: torch.Tensor, labels: torch.Tensor):
    """Common compute dtype (fp16/bf16 stay, anything else becomes fp32) and unit stride along D;
    rows may keep any stride, so slices of a larger batch are not copied."""
    dtype = torch.promote_types(q.dtype, c.dtype)
    if dtype not in (torch.float16, torch.bfloat16):
        dtype = torch.float32

    def unit_stride(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dtype)
        return t if t.stride(-1) == 1 else t.contiguous()

    return unit_stride(q), unit_stride(c), labels.contiguous()


def _forward(q, c, temperature, labels):
    nq, nc, d = q.shape[0], c.shape[0], q.shape[1]
    lse = torch.empty(nq, dtype=torch.float32, device=q.device)
    positive = torch.empty(nq, dtype=torch.float32, device=q.device)
    sizes = (nq, nc, d, q.stride(0), c.stride(0), 1.0 / temperature)
    _launch("fwd", nq, "BLOCK_Q", nq, nc, q, c, labels, lse, positive, *sizes)
    return (lse - positive).mean(), lse


def _backward(q, c, temperature, labels, lse, grad_loss, need_q=True, need_c=True):
    """fp32 gradients of grad_loss * mean loss w.r.t. q and c (None where not needed)."""
    nq, nc, d = q.shape[0], c.shape[0], q.shape[1]
    scale = 1.0 / temperature
    grad_scale = (grad_loss.detach().float() * (scale / nq)).reshape(1).contiguous()
    sizes = (nq, nc, d, q.stride(0), c.stride(0), scale)
    grad_q = grad_c = None
    if need_q:
        grad_q = torch.zeros(nq, d, dtype=torch.float32, device=q.device)
        _launch("dq", nq, "BLOCK_Q", nq, nc, q, c, labels, lse, grad_scale, grad_q, *sizes)
    if need_c:
        grad_c = torch.zeros(nc, d, dtype=torch.float32, device=q.device)
        _launch("dc", nc, "BLOCK_C", nq, nc, q, c, labels, lse, grad_scale, grad_c, *sizes)
    return grad_q, grad_c


class InfoNCETriton(torch.autograd.Function):
    """Forward keeps only lse[Nq]; backward recomputes the logits tiles."""

    @staticmethod
    def forward(ctx, q, c, temperature, labels):
        q_k, c_k, labels = _prepare(q, c, labels)
        loss, lse = _forward(q_k, c_k, temperature, labels)
        ctx.save_for_backward(q_k, c_k, labels, lse)
        ctx.temperature = temperature
        ctx.dtypes = (q.dtype, c.dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        q_k, c_k, labels, lse = ctx.saved_tensors
        need_q, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q, grad_c = _backward(q_k, c_k, ctx.temperature, labels, lse, grad_loss, need_q, need_c)
        grad_q = grad_q.to(ctx.dtypes[0]) if need_q else None
        grad_c = grad_c.to(ctx.dtypes[1]) if need_c else None
        return grad_q, grad_c, None, None


@torch.no_grad()
def infonce_forward_backward_triton(q, c, temperature, labels):
    """(loss, grad_q, grad_c) of the mean loss without autograd: forward kernel, then both backward
    kernels with an upstream gradient of one."""
    q_k, c_k, labels = _prepare(q, c, labels)
    loss, lse = _forward(q_k, c_k, temperature, labels)
    one = torch.ones((), dtype=torch.float32, device=q.device)
    grad_q, grad_c = _backward(q_k, c_k, temperature, labels, lse, one)
    return loss.float(), grad_q.to(q.dtype), grad_c.to(c.dtype)
