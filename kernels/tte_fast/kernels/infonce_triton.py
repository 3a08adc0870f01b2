"""Tiled InfoNCE in Triton: the Nq x Nc logits never exist in memory.

Forward (flash-attention style): one program per query block (and candidate split, when there are
too few query blocks to fill the GPU) streams over candidate blocks, keeping an online log-sum-exp
and the positive logit; it stores only lse[Nq] and pos[Nq] (per split, then combined).

Backward: a kernel recomputes logits tiles from q and c and writes the logits gradient
dS = softmax - one_hot (with the stored lse) for one strip of query rows at a time, in the input
dtype; cuBLAS then takes dq[strip] = dS @ c and dc += dS.T @ q[strip], scaled by g / (t * Nq).
Peak extra memory is one strip (STRIP_BYTES), whatever Nq and Nc. Why not accumulate dq and dc
inside the tile loop as flash attention does: with D in the thousands the gradient rows do not fit
in registers, and re-reading them from memory for every tile makes the update bandwidth-bound
(BLOCK_C / 4 flop per byte); the strip keeps both gradient matmuls at cuBLAS speed.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Sizes that only bound loops and masks: specialising on them (== 1, % 16) would compile a new
# variant for every batch shape. D and the row strides stay specialised: alignment enables wide loads.
_SIZES_ONLY = ["Nq", "Nc", "cols_per_split", "size_class"]


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
    q_ptr, c_ptr, labels_ptr, lse_ptr, pos_ptr, Nq, Nc, D, stride_q, stride_c, scale, cols_per_split,
    size_class, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Program (i, s): log-sum-exp and positive logit of query block i over candidate split s,
    stored at [s, rows]; the host combines the splits."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < Nq
    split = tl.program_id(1).to(tl.int64)
    c_begin = split * cols_per_split
    c_end = tl.minimum(c_begin + cols_per_split, Nc)
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    row_max = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    sum_exp = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    positive = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for c0 in range(c_begin, c_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        col_ok = cols < c_end
        logits = _logits_tile(
            q_ptr, c_ptr, rows, cols, row_ok, col_ok, D, stride_q, stride_c, scale,
            BLOCK_Q, BLOCK_C, BLOCK_D, UPCAST, PRECISION,
        )  # fmt: skip
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        positive += tl.sum(tl.where(cols[None, :] == label[:, None], logits, 0.0), axis=1)
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        row_max = new_max
    tl.store(lse_ptr + split * Nq + rows, row_max + tl.log(sum_exp), mask=row_ok)
    tl.store(pos_ptr + split * Nq + rows, positive, mask=row_ok)


@triton.jit(do_not_specialize=_SIZES_ONLY)
def _infonce_grad_logits_kernel(
    q_ptr, c_ptr, labels_ptr, lse_ptr, ds_ptr, Nq, Nc, D, stride_q, stride_c, stride_ds, scale,
    size_class, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """ds[i, j] = exp(q_i . c_j * scale - lse_i) - [j == label_i] for one [BLOCK_Q, BLOCK_C] tile.
    Unscaled (values in [-1, 1]), so a half-precision strip neither overflows nor underflows."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < Nq
    col_ok = cols < Nc
    logits = _logits_tile(
        q_ptr, c_ptr, rows, cols, row_ok, col_ok, D, stride_q, stride_c, scale,
        BLOCK_Q, BLOCK_C, BLOCK_D, UPCAST, PRECISION,
    )  # fmt: skip
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    probs = tl.exp(logits - lse[:, None])
    grad = tl.where(cols[None, :] == label[:, None], probs - 1.0, probs)
    out = ds_ptr + rows[:, None] * stride_ds + cols[None, :]
    tl.store(out, grad.to(ds_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs(shapes) -> list:
    return [
        triton.Config({"BLOCK_Q": bq, "BLOCK_C": bc, "BLOCK_D": bd}, num_warps=w, num_stages=st)
        for bq, bc, bd, w, st in shapes
    ]


# GPU tile candidates (BLOCK_Q, BLOCK_C, BLOCK_D, warps, stages), tuned once per (D, size class,
# dtypes). Both kernels are GEMM-shaped (a logits tile with a K = D loop) with a cheap epilogue.
_HALF_TILES = [(128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 4)]
# fp32 uses exact (IEEE) dots: TF32 would cost ~3 decimal digits of the loss and gradients.
_FP32_TILES = [(64, 64, 32, 4, 2), (32, 64, 32, 4, 2)]
# The interpreter: small tiles, one config (autotuning several fails there), fp32 dots (its bf16
# dot is wrong).
_INTERPRETER_META = dict(BLOCK_Q=16, BLOCK_C=16, BLOCK_D=32)
# Below this many logits a call takes well under a millisecond: tuning would cost more than it
# saves, so the first candidate runs untuned.
AUTOTUNE_MIN_LOGITS = 1 << 22
# Forward candidate splits start at multiples of this (the largest BLOCK_Q / BLOCK_C candidate).
SPLIT_ALIGN = 128
# Bytes of one backward strip of dS rows (input dtype): the backward's peak extra memory.
STRIP_BYTES = 256 << 20

_KERNELS = {"fwd": _infonce_fwd_kernel, "grad": _infonce_grad_logits_kernel}
_TUNED = {
    (name, fp32): triton.autotune(
        configs=_configs(_FP32_TILES if fp32 else _HALF_TILES),
        key=["D", "size_class"],
        cache_results=True,  # tuning results persist on disk: later processes skip the search
    )(kernel)
    for name, kernel in _KERNELS.items()
    for fp32 in (False, True)
}


def _launch(name: str, grid, nq: int, nc: int, *args) -> None:
    """Launch kernel `name` on grid(meta); args are its runtime arguments before `size_class`
    (args[0] is q). `size_class`, tile sizes and dot flags are added here."""
    if _interpreting():
        _KERNELS[name][grid(_INTERPRETER_META)](*args, 0, **_INTERPRETER_META, UPCAST=True, PRECISION="ieee")
        return
    fp32 = args[0].dtype == torch.float32
    flags = dict(UPCAST=fp32, PRECISION="ieee" if fp32 else "tf32")
    if nq * nc < AUTOTUNE_MIN_LOGITS:
        block_q, block_c, block_d, warps, stages = (_FP32_TILES if fp32 else _HALF_TILES)[0]
        meta = dict(BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_D=block_d)
        _KERNELS[name][grid(meta)](*args, 0, **meta, **flags, num_warps=warps, num_stages=stages)
        return
    size_class = (nq * nc).bit_length() // 4  # retune only when the problem grows ~16x
    _TUNED[(name, fp32)][grid](*args, size_class, **flags)


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


def _target_programs(device: torch.device) -> int:
    """Programs the forward should launch to fill the device: two per SM on a GPU."""
    if device.type != "cuda":
        return 1
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def _candidate_splits(nq: int, nc: int, device: torch.device) -> tuple[int, int]:
    """(candidates per split, splits) for the forward. Few query blocks (a GradCache chunk against
    many candidates) would leave most SMs idle, so the candidates are split too. Split edges are
    multiples of SPLIT_ALIGN, hence of every BLOCK_C."""
    query_blocks = triton.cdiv(nq, SPLIT_ALIGN)
    splits = max(1, min(triton.cdiv(nc, SPLIT_ALIGN), triton.cdiv(_target_programs(device), query_blocks)))
    per_split = triton.cdiv(triton.cdiv(nc, splits), SPLIT_ALIGN) * SPLIT_ALIGN
    return per_split, triton.cdiv(nc, per_split)


def _forward(q, c, temperature, labels):
    nq, nc, d = q.shape[0], c.shape[0], q.shape[1]
    per_split, splits = _candidate_splits(nq, nc, q.device)
    lse = torch.empty(splits, nq, dtype=torch.float32, device=q.device)
    positive = torch.empty(splits, nq, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(nq, meta["BLOCK_Q"]), splits)
    sizes = (nq, nc, d, q.stride(0), c.stride(0), 1.0 / temperature, per_split)
    _launch("fwd", grid, nq, nc, q, c, labels, lse, positive, *sizes)
    lse = torch.logsumexp(lse, dim=0) if splits > 1 else lse[0]
    return (lse - positive.sum(dim=0)).mean(), lse


def _strip_rows(nq: int, nc: int, element_size: int) -> int:
    rows = STRIP_BYTES // (nc * element_size)
    rows = rows // 128 * 128 if rows >= 128 else max(rows, 1)  # whole tiles per strip
    return min(nq, rows)


def _backward(q, c, temperature, labels, lse, grad_loss, need_q=True, need_c=True):
    """Gradients of grad_loss * mean loss w.r.t. q and c (None where not needed), one strip of query
    rows at a time: dq (complete per strip) in q's dtype, dc (summed over strips) in fp32."""
    nq, nc, d = q.shape[0], c.shape[0], q.shape[1]
    scale = 1.0 / temperature
    grad_scale = grad_loss.detach().float() * (scale / nq)  # stays on the device: no sync
    grad_q = torch.empty(nq, d, dtype=q.dtype, device=q.device) if need_q else None
    grad_c = torch.zeros(nc, d, dtype=torch.float32, device=q.device) if need_c else None
    step = _strip_rows(nq, nc, q.element_size())
    strip = torch.empty(step, nc, dtype=q.dtype, device=q.device)
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        rows, ds = stop - start, strip[: stop - start]
        grid = lambda meta, rows=rows: (triton.cdiv(rows, meta["BLOCK_Q"]), triton.cdiv(nc, meta["BLOCK_C"]))
        q_rows = q[start:stop]
        sizes = (rows, nc, d, q.stride(0), c.stride(0), ds.stride(0), scale)
        _launch("grad", grid, nq, nc, q_rows, c, labels[start:stop], lse[start:stop], ds, *sizes)
        if need_q:
            torch.mul(torch.mm(ds, c), grad_scale, out=grad_q[start:stop])
        if need_c:
            grad_c.addcmul_(torch.mm(ds.T, q_rows), grad_scale)
    return grad_q, grad_c


class InfoNCETriton(torch.autograd.Function):
    """Forward keeps only lse[Nq]; backward recomputes the logits tiles strip by strip."""

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
    """(loss, grad_q, grad_c) of the mean loss without autograd: the forward, then the backward
    with an upstream gradient of one."""
    q_k, c_k, labels = _prepare(q, c, labels)
    loss, lse = _forward(q_k, c_k, temperature, labels)
    one = torch.ones((), dtype=torch.float32, device=q.device)
    grad_q, grad_c = _backward(q_k, c_k, temperature, labels, lse, one)
    return loss.float(), grad_q.to(q.dtype), grad_c.to(c.dtype)
