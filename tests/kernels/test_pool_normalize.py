"""Last-token pooling + L2 norm: every backend against the float64 reference, fresh inputs each run."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_rel_close
from kernel_cases import on_every_backend, poison_empty

from tte_fast import kernels
from tte_fast.kernels.reference import last_token_index_reference, pool_normalize_reference

# Gradients come back in the input dtype: 2 eps of it (fp32 normalises in fp32: 8 eps).
GRAD_TOLERANCE = {torch.float32: 8 * torch.finfo(torch.float32).eps}
GRAD_TOLERANCE.update({dt: 2 * torch.finfo(dt).eps for dt in (torch.float16, torch.bfloat16)})
# The output is always fp32, normalised from values that are exact in fp32.
OUTPUT_TOLERANCE = 8 * torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = torch.seed()
    print(f"torch seed {seed}")


def random_mask(batch: int, length: int, padding: str) -> torch.Tensor:
    """0/1 mask whose rows are left padded, right padded, or a random mix of both."""
    lengths = torch.randint(1, length + 1, (batch,))
    mask = torch.zeros(batch, length, dtype=torch.int64)
    for row, n in enumerate(lengths.tolist()):
        side = padding if padding != "mixed" else ("left" if torch.rand(()) < 0.5 else "right")
        if side == "left":
            mask[row, length - n :] = 1
        else:
            mask[row, :n] = 1
    return mask


@on_every_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", ["left", "right", "mixed"])
@pytest.mark.parametrize("batch,length,dim", [(1, 1, 8), (1, 6, 33), (5, 9, 64), (7, 1, 100), (4, 13, 130)])
def test_pool_normalize_matches_reference(backend, device, dtype, padding, batch, length, dim):
    hidden = (3 * torch.randn(batch, length, dim, dtype=torch.float64)).to(device, dtype).requires_grad_(True)
    mask = random_mask(batch, length, padding)
    out = kernels.pool_normalize(hidden, mask.to(device), backend=backend)
    assert out.dtype == torch.float32 and out.shape == (batch, dim)
    upstream = torch.randn(batch, dim, dtype=torch.float64)
    out.backward(upstream.to(device, torch.float32))

    hidden64 = hidden.detach().cpu().double().requires_grad_(True)
    expected = pool_normalize_reference(hidden64, mask)
    expected.backward(upstream)
    # Output: hidden values are exact in fp32, so only the fp32 normalisation rounds.
    assert_rel_close(out.detach(), expected.detach(), OUTPUT_TOLERANCE, "output")
    assert hidden.grad.dtype == dtype and hidden.grad.shape == hidden.shape
    assert_rel_close(hidden.grad, hidden64.grad, GRAD_TOLERANCE[dtype], "grad")
    pooled = torch.zeros(batch, length, dtype=torch.bool)
    pooled[torch.arange(batch), last_token_index_reference(mask)] = True
    assert (hidden.grad.cpu()[~pooled] == 0).all(), "gradient leaked onto non-pooled positions"


@pytest.mark.parametrize("padding", ["left", "right", "mixed"])
def test_last_token_index_matches_reference(padding):
    mask = random_mask(11, 17, padding)
    assert torch.equal(kernels.last_token_index(mask), last_token_index_reference(mask))
    assert torch.equal(kernels.last_token_index(mask.bool()), last_token_index_reference(mask))
    if padding == "left":
        assert (kernels.last_token_index(mask) == 16).all()


@on_every_backend
def test_zero_vector_pools_to_zero_not_nan(backend, device):
    hidden = torch.zeros(2, 3, 8, device=device)
    mask = torch.ones(2, 3, dtype=torch.int64, device=device)
    out = kernels.pool_normalize(hidden, mask, backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(2, 8))


def test_torch_path_upcasts_only_pooled_rows(monkeypatch):
    """The [B, T, D] tensor itself is never converted: only the gathered [B, D] rows are."""
    hidden = torch.randn(3, 50, 16, dtype=torch.bfloat16)
    mask = random_mask(3, 50, "mixed")
    converted = []
    real_float = torch.Tensor.float

    def spy_float(self, *args, **kwargs):
        converted.append(tuple(self.shape))
        return real_float(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "float", spy_float)
    kernels.pool_normalize(hidden, mask, backend="torch")
    monkeypatch.undo()
    assert converted and all(shape == (3, 16) for shape in converted)


@on_every_backend
def test_strided_and_float64_hidden(backend, device):
    """Strided views (every other feature, a token slice) and float64 input are read in place."""
    wide = torch.randn(3, 8, 64, dtype=torch.float64, device=device)
    mask = random_mask(3, 8, "mixed").to(device)
    for hidden in (wide.float()[:, :, ::2], wide[:, 1:, :40], wide):
        mask_t = mask[:, -hidden.shape[1] :].clone()
        mask_t[:, -1] = 1  # keep every row non-empty after slicing
        out = kernels.pool_normalize(hidden, mask_t, backend=backend)
        expected = pool_normalize_reference(hidden.cpu().double(), mask_t.cpu())
        assert_rel_close(out, expected, OUTPUT_TOLERANCE, f"stride {hidden.stride()}")


@on_every_backend
def test_poisoned_allocations_are_overwritten(backend, device, monkeypatch):
    hidden = torch.randn(4, 6, 40, device=device, requires_grad=True)
    mask = random_mask(4, 6, "mixed")
    poison_empty(monkeypatch)
    out = kernels.pool_normalize(hidden, mask.to(device), backend=backend)
    out.sum().backward()
    monkeypatch.undo()
    assert torch.isfinite(out).all() and torch.isfinite(hidden.grad).all()
    expected = pool_normalize_reference(hidden.detach().cpu().double(), mask)
    assert_rel_close(out, expected, OUTPUT_TOLERANCE, "output")


@on_every_backend
def test_bool_and_float_masks(backend, device):
    hidden = torch.randn(3, 5, 24, device=device)
    mask = random_mask(3, 5, "mixed")
    expected = pool_normalize_reference(hidden.cpu().double(), mask)
    for variant in (mask.bool(), mask.float(), mask.int()):
        out = kernels.pool_normalize(hidden, variant.to(device), backend=backend)
        assert_rel_close(out, expected, OUTPUT_TOLERANCE, f"mask dtype {variant.dtype}")
