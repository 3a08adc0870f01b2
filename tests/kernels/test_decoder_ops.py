"""The fused decoder's elementwise ops (C++ extension on CPU, its AVX-512 and portable loops) against
HF's torch formulas, on fresh random inputs: float32 to float32 rounding, bfloat16 equal to torch's
own rounding almost everywhere (elsewhere within two bfloat16 steps: the reduction order and exp's
last bits may move an intermediate rounding by one step, and the next rounding by one more)."""

from __future__ import annotations

import pytest
import torch

from tte_fast.kernels import decoder_ops_cpp as ops

DTYPES = [torch.float32, torch.bfloat16]
# Every test on the AVX-512 loops (where the CPU has them) and on the portable ones.
pytestmark = pytest.mark.usefixtures("cpp_path")


@pytest.fixture(autouse=True)
def fresh_seed():
    print(f"torch seed {torch.seed()}")


def check(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == dtype
    error = (got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-2)
    if dtype == torch.float32:
        assert error.max() < 2e-6, f"largest relative error {error.max():.2e}"
    else:
        assert error.max() <= 2 * 2**-7, f"largest relative error {error.max():.2e} (over two bfloat16 steps)"
        same = (got == want).float().mean()
        assert same >= 0.99, f"only {same:.1%} of elements equal torch's"


def test_the_extension_runs_these_ops():
    x = torch.randn(2, 8)
    assert ops._extension(x) is not None
    assert ops._extension(x.half()) is None and ops._extension(x, x.bfloat16()) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,dim", [(1, 8), (64, 576), (5, 1536), (3, 17)])
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm(dtype, rows, dim, with_delta):
    residual = (3 * torch.randn(rows, dim)).to(dtype)
    delta = torch.randn(rows, dim).to(dtype) if with_delta else None
    weight = (1 + 0.3 * torch.randn(dim)).to(dtype)
    want_sum = residual + delta if with_delta else residual.clone()
    want = ops.rms_norm_reference(want_sum, weight, 1e-6)
    total, normed = ops.add_rms_norm(residual, delta, weight, 1e-6)
    assert total.data_ptr() == residual.data_ptr(), "the sum is written into the residual"
    assert torch.equal(total, want_sum), "the residual add rounds as torch's"
    check(normed, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,heads,kv_heads,dim", [(64, 9, 3, 64), (3, 12, 2, 128), (2, 2, 1, 8)])
def test_rotary_of_fused_qkv_columns(dtype, rows, heads, kv_heads, dim):
    """Query and key columns of a fused [q; k; v] output (strided rows) against HF's formula."""
    qkv = (2 * torch.randn(rows, (heads + 2 * kv_heads) * dim)).to(dtype)
    q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    angles = torch.rand(rows, dim // 2) * 100
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    for x, n in ((q, heads), (k, kv_heads)):
        got = ops.rotary(x, cos, sin, n)
        assert got.is_contiguous() and got.shape == (rows, n, 1, dim)
        check(got, ops.rotary_reference(x, cos, sin, n), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(64, 1536), (1, 7), (9, 100)])
def test_silu_mul(dtype, rows, width):
    gate_up = (4 * torch.randn(rows, 2 * width)).to(dtype)
    check(ops.silu_mul(gate_up), ops.silu_mul_reference(gate_up), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_far_from_zero(dtype):
    """Past exp's range: silu of -90 and -1e30 is -0 (torch: -7e-38 and -0), of 90 and 1e30 itself."""
    gate_up = torch.tensor([[0.0, -90.0, 90.0, -1e30, 1e30, 1.0, 1.0, 1.0, 1.0, 1.0]]).to(dtype)
    got = ops.silu_mul(gate_up)
    torch.testing.assert_close(got, ops.silu_mul_reference(gate_up), atol=1e-30, rtol=0)


def test_other_inputs_take_the_torch_formulas():
    """float16, a non-contiguous residual, rotary tables of another batch: the reference formulas
    (equal results, or torch's own shape error: the extension never reads past a table)."""
    x, cos = torch.randn(3, 16), torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="size of tensor"):
        ops.rotary(x, cos, cos, 2)
    half = torch.randn(4, 16, dtype=torch.float16)
    assert torch.equal(ops.silu_mul(half), ops.silu_mul_reference(half))
    residual = torch.randn(16, 4).t()
    weight = torch.randn(16)
    total, normed = ops.add_rms_norm(residual, None, weight, 1e-6)
    assert torch.equal(normed, ops.rms_norm_reference(residual, weight, 1e-6))


@pytest.mark.parametrize("threads", [2, 3])
def test_rows_split_over_torchs_openmp_team_equal_one_thread(threads):
    """A large op's rows run in one chunk per thread on torch's OpenMP team (the default: torch's
    thread count): each row's arithmetic is the same, so the outputs are bit-identical, last row too."""
    from tte_fast import _C

    if not _C.openmp_team_available():
        pytest.skip("no OpenMP runtime with GOMP entry points loaded (torch built without one)")
    rows, dtype = 67, torch.bfloat16  # above the extension's size for the team, not a multiple of threads
    residual, delta = torch.randn(rows, 576, dtype=dtype), torch.randn(rows, 576, dtype=dtype)
    weight = torch.randn(576, dtype=dtype)
    qkv = torch.randn(rows, 15 * 64, dtype=dtype)
    cos, sin = torch.randn(rows, 64, dtype=dtype), torch.randn(rows, 64, dtype=dtype)
    gate_up = torch.randn(rows, 2 * 1536, dtype=dtype)
    outputs = {}
    for n in (1, threads):
        one_residual = residual.clone()
        outputs[n] = [
            *ops.add_rms_norm(one_residual, delta, weight, 1e-6, threads=n),
            ops.rotary(qkv[:, : 9 * 64], cos, sin, 9, threads=n),
            ops.silu_mul(gate_up, threads=n),
        ]
    for team, one in zip(outputs[threads], outputs[1]):
        assert torch.equal(team, one)
