"""The AMX linear (``csrc/amx_linear.cpp``, through ``tte_fast.runtime.cpu_linear.PackedLinear``)
against a float64 reference on fresh random inputs: bfloat16 outputs equal the exact result's
rounding almost everywhere (elsewhere one bfloat16 step: the float32 sums' order), every row count
a step meets (one tile's tail rows, several row tiles, several 64-row passes), with and without a
bias; the layer takes it only where it applies; bad sizes raise. The kernel tests run where the CPU
has AMX tiles (skipped elsewhere, where the layer's oneDNN path is tested instead)."""

from __future__ import annotations

import pytest
import torch

from tte_fast.kernels.decoder_ops_cpp import silu_mul
from tte_fast.runtime.cpu_linear import AMX_ROWS, PackedLinear, amx_extension


def amx_module():
    from tte_fast import _C

    if not hasattr(_C, "amx_available") or not _C.amx_available():
        pytest.skip("this CPU has no AMX tiles (or the OS did not grant them)")
    return _C


@pytest.fixture(autouse=True)
def fresh_seed():
    print(f"torch seed {torch.seed()}")


def check_rounding(got: torch.Tensor, x, weight, bias) -> None:
    """``got`` is the float64 result rounded to bfloat16, but at a few elements, which are within one
    bfloat16 step of it plus what float32 sums of its products can drift (a cancelling sum's
    rounding then falls on the other side)."""
    want = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    rounded = want.to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == rounded.shape
    step = 2.0 ** (torch.floor(torch.log2(want.abs().clamp_min(1e-30))) - 7)  # one bfloat16 step
    drift = 2.0**-24 * x.shape[-1] * (x.double().abs() @ weight.double().abs().T)
    assert ((got.double() - want).abs() <= step + drift).all(), "an element off by more than one step"
    same = (got == rounded).double().mean()
    assert same >= 0.98, f"only {same:.1%} of elements are the exact result's rounding"


@pytest.mark.parametrize("rows", [1, 7, 16, 17, 40, 64, 65, 128])
@pytest.mark.parametrize("shape", [(16, 32), (48, 96), (960, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_amx_linear_equals_the_rounded_exact_product(rows, shape, bias):
    amx_module()
    out_features, in_features = shape
    weight = torch.randn(out_features, in_features).bfloat16()
    b = torch.randn(out_features).bfloat16() if bias else None
    linear = PackedLinear(weight, b)
    assert linear.amx is not None and linear.packed is None  # the AMX kernel's weight, not oneDNN's
    x = torch.randn(rows, in_features).bfloat16()
    check_rounding(linear(x), x, weight, b)


@pytest.mark.parametrize("rows", [1, 17, 64, 65])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_output_is_silu_mul_of_the_projection(rows, bias):
    """``gated=True`` (the ``[gate; up]`` projection): the kernel's SwiGLU from its tiles equals
    ``silu_mul`` of the plain projection's output bit for bit (the same sums, rounded where torch
    rounds), and so does the layer's own path without the kernel."""
    extension = amx_module()
    weight = torch.randn(2 * 48, 64).bfloat16()  # gate and up of 48 features: three 16-row blocks each
    b = torch.randn(2 * 48).bfloat16() if bias else None
    x = torch.randn(rows, 64).bfloat16()
    gated = PackedLinear(weight, b, gated=True)
    assert gated.amx is not None
    want = silu_mul(PackedLinear(weight, b)(x))
    got = gated(x)
    assert got.shape == (rows, 48) and torch.equal(got, want)
    extension.set_amx_enabled(False)
    try:
        without = PackedLinear(weight, b, gated=True)
        assert without.amx is None
        torch.testing.assert_close(without(x), want, atol=2e-2, rtol=2e-2)
    finally:
        extension.set_amx_enabled(True)


def test_leading_dims_and_strided_inputs():
    amx_module()
    weight, bias = torch.randn(64, 64).bfloat16(), torch.randn(64).bfloat16()
    linear = PackedLinear(weight, bias)
    x = torch.randn(3, 5, 128).bfloat16()[..., ::2]  # [3, 5, 64], not contiguous
    got = linear(x)
    assert got.shape == (3, 5, 64)
    check_rounding(got.reshape(15, 64), x.reshape(15, 64), weight, bias)


def test_long_inputs_and_other_dtypes_take_f_linear(monkeypatch):
    """Past ``AMX_ROWS`` rows (a prefill) and in float32 the layer never calls the kernel."""
    extension = amx_module()
    calls = []

    class Spy:
        @staticmethod
        def amx_linear(*args):
            calls.append(args)
            return extension.amx_linear(*args)

    linear = PackedLinear(torch.randn(32, 64).bfloat16())
    monkeypatch.setattr(linear, "_extension", Spy)
    x = torch.randn(AMX_ROWS + 1, 64).bfloat16()
    torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, linear.weight))
    assert calls == []
    linear(x[:AMX_ROWS])
    assert len(calls) == 1
    assert amx_extension(torch.randn(32, 64)) is None  # float32
    assert amx_extension(torch.randn(30, 64).bfloat16()) is None  # 30 output features: not whole tiles
    assert amx_extension(torch.randn(32, 48).bfloat16()) is None  # 48 input features: not whole tiles


def test_switched_off_the_layer_uses_onednn():
    extension = amx_module()
    extension.set_amx_enabled(False)
    try:
        assert not extension.amx_available()
        linear = PackedLinear(torch.randn(32, 64).bfloat16())
        assert linear.amx is None and (linear.packed is not None or not torch.backends.mkldnn.is_available())
    finally:
        extension.set_amx_enabled(True)


def test_bad_sizes_raise():
    extension = amx_module()
    weight, out = torch.randn(30, 64).bfloat16(), torch.empty(30 * 64).bfloat16()
    with pytest.raises(ValueError, match="multiple of 16"):
        extension.pack_amx_weight(weight.data_ptr(), out.data_ptr(), 30, 64)
    with pytest.raises(ValueError, match="30 x 64"):
        extension.amx_linear(0, 0, 0, 0, 1, 30, 64, 1)
    with pytest.raises(ValueError, match="rows must be positive"):
        extension.amx_linear(0, 0, 0, 0, 0, 32, 64, 1)
    with pytest.raises(ValueError, match="gated weight needs a multiple of 32"):
        extension.amx_linear(0, 0, 0, 0, 1, 48, 64, 1, True)
    assert PackedLinear(torch.randn(48, 64).bfloat16(), gated=True).amx is None  # 24 features: half blocks
