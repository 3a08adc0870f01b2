"""Bad input raises a ValueError naming the problem, before any kernel runs, on every backend."""

from __future__ import annotations

import os

import pytest
import torch

from tte_fast import kernels

# Checks run before dispatch, so every backend must reject the same inputs (Triton: CPU interpreter).
BACKENDS = ["torch", "reference"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])


@pytest.fixture
def qc():
    return torch.randn(4, 8), torch.randn(8, 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda q, c: (q, c[:, :5], {}), "feature dimension"),
        (lambda q, c: (q[:0], c, {}), "q is empty"),
        (lambda q, c: (q, c[:0], {}), "c is empty"),
        (lambda q, c: (q[0], c, {}), "q must have 2 dimensions"),
        (lambda q, c: (q.long(), c, {}), "floating-point.*int64"),
        (lambda q, c: (q, c.int(), {}), "c must be a floating-point"),
        (lambda q, c: (q, c, {"labels": torch.tensor([0, 1, 2, 8])}), "found 8"),
        (lambda q, c: (q, c, {"labels": torch.tensor([0, -1, 2, 3])}), "found -1"),
        (lambda q, c: (q, c, {"labels": torch.tensor([0, 1, 2])}), r"labels must have shape \[Nq\]"),
        (lambda q, c: (q, c, {"labels": torch.zeros(4)}), "integer tensor"),
        (lambda q, c: (q, c, {"temperature": 0.0}), "temperature must be finite and > 0, got 0.0"),
        (lambda q, c: (q, c, {"temperature": float("nan")}), "got nan"),
        (lambda q, c: (q, c, {"temperature": "hot"}), "temperature must be a number"),
        (lambda q, c: (c, q[:3], {}), "Nc to be a multiple of Nq"),
        # 6 candidates for 4 queries: a floor (6 // 4 = 1) would pair them silently and wrongly.
        (lambda q, c: (q, c[:6], {}), r"multiple of Nq \(got Nq=4, Nc=6\)"),
        (lambda q, c: (q.numpy(), c, {}), "q must be a torch.Tensor"),
    ],
)
def test_infonce_rejects_bad_input(qc, backend, make, match):
    q, c, extra = make(*qc)
    with pytest.raises(ValueError, match=match):
        kernels.infonce_loss(q, c, backend=backend, **extra)
    with pytest.raises(ValueError, match=match):
        kernels.infonce_loss_and_grads(q, c, backend=backend, **extra)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "hidden,mask,match",
    [
        (torch.randn(2, 3, 4), torch.tensor([[1, 1, 1], [0, 0, 0]]), "row 1 has no real token"),
        (torch.randn(2, 3, 4), torch.ones(2, 4), r"does not match hidden's \[B, T\] = \[2, 3\]"),
        (torch.randn(0, 3, 4), torch.ones(0, 3), "hidden is empty"),
        (torch.randn(2, 3), torch.ones(2, 3), "hidden must have 3 dimensions"),
        (torch.ones(2, 3, 4, dtype=torch.int32), torch.ones(2, 3), "floating-point.*int32"),
        (torch.randn(2, 3, 4), torch.tensor([[1, 2, 1], [1, 1, 1]]), "only 0 and 1, found 2"),
    ],
)
def test_pool_normalize_rejects_bad_input(backend, hidden, mask, match):
    with pytest.raises(ValueError, match=match):
        kernels.pool_normalize(hidden, mask, backend=backend)


def test_last_token_index_rejects_empty_rows():
    with pytest.raises(ValueError, match="row 0 has no real token"):
        kernels.last_token_index(torch.zeros(1, 5))


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'cuda-magic'"):
        kernels.infonce_loss(torch.randn(2, 4), torch.randn(2, 4), backend="cuda-magic")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels.infonce_loss(torch.randn(2, 4), torch.randn(2, 4), backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels.pool_normalize(torch.randn(2, 3, 4), torch.ones(2, 3), backend="triton")


def test_auto_backend_is_torch_on_cpu():
    from tte_fast.kernels.validation import resolve_backend

    assert resolve_backend(None, torch.device("cpu")) == "torch"
    assert resolve_backend(None, torch.device("cuda", 0)) == "triton"
