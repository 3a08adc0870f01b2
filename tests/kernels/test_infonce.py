"""InfoNCE: every backend against the naive float64 reference, on fresh random inputs each run."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_rel_close
from kernel_cases import on_every_backend, poison_empty

from tte_fast import kernels
from tte_fast.kernels import infonce_torch
from tte_fast.kernels.reference import infonce_loss_reference

# Relative error allowed (max abs error / max abs value), in units of the input dtype's epsilon.
# fp32: logits carry 1 / temperature (up to 100x) of rounding; measured worst ~16 eps. bf16: the
# gradients pass through bf16 up to three times (the Triton backward's dS strip, its matmul output,
# the returned gradient); measured worst ~1 eps.
TOLERANCE = {
    torch.float32: 100 * torch.finfo(torch.float32).eps,
    torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps,
}
# The loss is accumulated in fp32 whatever the inputs (the reference sees the same bf16-rounded
# values), so it is held to fp32 precision for bf16 inputs too.
LOSS_TOLERANCE = TOLERANCE[torch.float32]
# (Nq, Nc, D, explicit labels?) covering Nq != Nc, hard negatives, odd D, one query, Nq > Nc.
SHAPES = [
    (1, 1, 8, False),
    (5, 5, 24, False),
    (4, 12, 33, False),
    (7, 3, 17, True),
    (9, 23, 65, True),
    (37, 37, 20, False),  # several query and candidate tiles in the Triton kernels
]
TEMPERATURES = [0.01, 0.02, 0.1, 1.0]


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = torch.seed()  # new random inputs every run; printed so a failure can be replayed
    print(f"torch seed {seed}")


def unit_rows(n: int, d: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).to(device, dtype)


def make_inputs(nq, nc, d, explicit_labels, dtype, device="cpu"):
    q, c = unit_rows(nq, d, dtype, device), unit_rows(nc, d, dtype, device)
    labels = torch.randint(0, nc, (nq,), device=device) if explicit_labels else None
    return q, c, labels


def reference(q, c, temperature, labels):
    """Loss and gradients in float64 on CPU from the exact values the kernel sees (after any bf16
    rounding)."""
    q64 = q.detach().cpu().double().requires_grad_(True)
    c64 = c.detach().cpu().double().requires_grad_(True)
    if labels is None:
        labels = torch.arange(q.shape[0]) * (c.shape[0] // q.shape[0])
    labels = labels.cpu()
    loss = infonce_loss_reference(q64, c64, temperature, labels)
    grad_q, grad_c = torch.autograd.grad(loss, (q64, c64))
    return loss.detach(), grad_q, grad_c


@on_every_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_loss_and_grads_match_reference(backend, device, dtype, shape, temperature):
    q, c, labels = make_inputs(*shape, dtype, device)
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, temperature, labels, backend=backend)
    ref_loss, ref_gq, ref_gc = reference(q, c, temperature, labels)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and not loss.requires_grad
    assert grad_q.shape == q.shape and grad_q.dtype == q.dtype
    assert grad_c.shape == c.shape and grad_c.dtype == c.dtype
    tol = TOLERANCE[dtype]
    assert_rel_close(loss, ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(grad_q, ref_gq, tol, "grad_q")
    assert_rel_close(grad_c, ref_gc, tol, "grad_c")


@on_every_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_matches_reference(backend, device, dtype):
    q, c, labels = make_inputs(6, 18, 40, False, dtype, device)
    q.requires_grad_(True)
    c.requires_grad_(True)
    loss = kernels.infonce_loss(q, c, 0.05, labels, backend=backend)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    (2.5 * loss).backward()  # a non-unit upstream gradient must scale both gradients
    ref_loss, ref_gq, ref_gc = reference(q, c, 0.05, labels)
    tol = TOLERANCE[dtype]
    assert_rel_close(loss.detach(), ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(q.grad, 2.5 * ref_gq, tol, "q.grad")
    assert_rel_close(c.grad, 2.5 * ref_gc, tol, "c.grad")


@on_every_backend
def test_gradient_of_one_input_only(backend, device):
    q, c, _ = make_inputs(4, 8, 16, False, torch.float32, device)
    c.requires_grad_(True)
    kernels.infonce_loss(q, c, 0.1, backend=backend).backward()
    assert q.grad is None
    assert_rel_close(c.grad, reference(q, c, 0.1, None)[2], TOLERANCE[torch.float32], "c.grad")


def test_no_grad_forward_matches_reference():
    q, c, labels = make_inputs(5, 15, 24, True, torch.float32)
    loss = kernels.infonce_loss(q, c, 0.02, labels, backend="torch")
    assert_rel_close(loss, reference(q, c, 0.02, labels)[0], TOLERANCE[torch.float32], "loss")


def test_torch_path_chunks_and_never_builds_full_logits(monkeypatch):
    """Force many small query chunks; each logits block may hold at most one chunk of rows."""
    monkeypatch.setattr(infonce_torch, "BLOCK_ELEMENTS", 3 * 20)
    largest = []
    real_mm = torch.mm

    def spy_mm(a, b, **kwargs):
        out = real_mm(a, b, **kwargs)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(infonce_torch.torch, "mm", spy_mm)
    q, c, labels = make_inputs(10, 20, 12, True, torch.float32)
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, 0.05, labels, backend="torch")
    monkeypatch.undo()
    assert max(largest) <= 3 * 20 < 10 * 20
    ref_loss, ref_gq, ref_gc = reference(q, c, 0.05, labels)
    tol = TOLERANCE[torch.float32]
    assert_rel_close(loss, ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(grad_q, ref_gq, tol, "grad_q")
    assert_rel_close(grad_c, ref_gc, tol, "grad_c")


@on_every_backend
def test_poisoned_allocations_are_overwritten(backend, device, monkeypatch):
    """Every buffer the kernels allocate uninitialised starts as NaN: none may leak into results."""
    q, c, labels = make_inputs(7, 21, 36, False, torch.float32, device)
    poison_empty(monkeypatch)
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, 0.02, labels, backend=backend)
    monkeypatch.undo()
    for name, t in (("loss", loss), ("grad_q", grad_q), ("grad_c", grad_c)):
        assert torch.isfinite(t).all(), f"{name} holds poisoned values"
    assert_rel_close(grad_c, reference(q, c, 0.02, labels)[2], TOLERANCE[torch.float32], "grad_c")


@on_every_backend
def test_extreme_logits_stay_finite(backend, device):
    """Temperature 0.01 with identical rows gives logits of 100: the log-sum-exp must not overflow."""
    q = unit_rows(1, 16, torch.float32, device).repeat(4, 1)
    c = q.clone()
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, 0.01, backend=backend)
    assert torch.isfinite(loss) and torch.isfinite(grad_q).all() and torch.isfinite(grad_c).all()
    assert_rel_close(loss, torch.tensor(4.0).log().double(), 1e-5, "loss")


@on_every_backend
def test_row_strided_inputs(backend, device):
    """Rows of a wider buffer (row stride != D) and a transposed-then-copied layout give the same result."""
    wide_q, wide_c = unit_rows(6, 48, torch.float32, device), unit_rows(18, 48, torch.float32, device)
    q, c = wide_q[:, 8:40], wide_c[:, 8:40]
    assert q.stride(0) == 48
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, 0.05, backend=backend)
    ref_loss, ref_gq, ref_gc = reference(q.contiguous(), c.contiguous(), 0.05, None)
    tol = TOLERANCE[torch.float32]
    assert_rel_close(loss, ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(grad_q, ref_gq, tol, "grad_q")
    assert_rel_close(grad_c, ref_gc, tol, "grad_c")
    c_t = c.T.contiguous().T  # column-major: stride along D is not 1
    assert_rel_close(kernels.infonce_loss(q, c_t, 0.05, backend=backend), ref_loss, tol, "column-major loss")


@pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="compiled Triton kernels need a GPU and TRITON_INTERPRET=0",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nq,nc,d", [(1024, 4096, 96), (64, 192, 1536)])
def test_triton_gpu_sizes_match_reference(dtype, nq, nc, d):
    """Sizes that reach the autotuned launch (>= AUTOTUNE_MIN_LOGITS) and a wide D of many chunks."""
    q, c, labels = make_inputs(nq, nc, d, True, dtype, "cuda")
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, 0.02, labels, backend="triton")
    ref_loss, ref_gq, ref_gc = reference(q, c, 0.02, labels)
    tol = TOLERANCE[dtype]
    assert_rel_close(loss, ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(grad_q, ref_gq, tol, "grad_q")
    assert_rel_close(grad_c, ref_gc, tol, "grad_c")


def test_torch_path_refuses_a_second_backward():
    """The torch path hands its precomputed gradients to autograd in place; reusing them must fail
    loudly rather than return scaled-twice gradients."""
    q, c, _ = make_inputs(4, 8, 16, False, torch.float32)
    q.requires_grad_(True)
    loss = kernels.infonce_loss(q, c, 0.1, backend="torch")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU needs the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backward_in_strips(dtype, monkeypatch):
    """The backward's dS strip holds 3 query rows (an uneven last strip too); nothing else changes."""
    from tte_fast.kernels import infonce_triton

    nq, nc = 11, 22
    monkeypatch.setattr(infonce_triton, "STRIP_BYTES", 3 * nc * torch.finfo(dtype).bits // 8)
    assert infonce_triton._strip_rows(nq, nc, torch.finfo(dtype).bits // 8) == 3
    q, c, labels = make_inputs(nq, nc, 40, True, dtype)
    loss, grad_q, grad_c = kernels.infonce_loss_and_grads(q, c, 0.05, labels, backend="triton")
    ref_loss, ref_gq, ref_gc = reference(q, c, 0.05, labels)
    tol = TOLERANCE[dtype]
    assert_rel_close(loss, ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(grad_q, ref_gq, tol, "grad_q")
    assert_rel_close(grad_c, ref_gc, tol, "grad_c")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU needs the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_forward_split_over_candidates(dtype, monkeypatch):
    """Few queries against many candidates: the forward splits the candidates (as it does to fill a
    GPU) and combines the per-split log-sum-exps; positives fall in different splits."""
    from tte_fast.kernels import infonce_triton

    monkeypatch.setattr(infonce_triton, "SPLIT_ALIGN", 16)
    monkeypatch.setattr(infonce_triton, "_target_programs", lambda device: 64)
    assert infonce_triton._candidate_splits(11, 70, torch.device("cpu")) == (16, 5)
    q, c, labels = make_inputs(11, 70, 24, True, dtype)
    q.requires_grad_(True)
    c.requires_grad_(True)
    loss = kernels.infonce_loss(q, c, 0.05, labels, backend="triton")
    loss.backward()
    ref_loss, ref_gq, ref_gc = reference(q, c, 0.05, labels)
    tol = TOLERANCE[dtype]
    assert_rel_close(loss.detach(), ref_loss, LOSS_TOLERANCE, "loss")
    assert_rel_close(q.grad, ref_gq, tol, "q.grad")
    assert_rel_close(c.grad, ref_gc, tol, "c.grad")
