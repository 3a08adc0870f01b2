"""The Triton kernels compile for a Hopper GPU (sm_90) through ptxas, without needing one: this
catches what the CPU interpreter never checks (dot operand types and shapes, constexpr branches,
shared-memory layout). Each compilation runs in a fresh process without TRITON_INTERPRET (under the
interpreter @triton.jit gives functions that cannot be compiled). Skipped where Triton's CUDA
backend or its bundled ptxas is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SKIP_EXIT = 77  # the child's "no offline CUDA toolchain here"


def compile_in_child() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == SKIP_EXIT:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_compile_for_sm90():
    """Every InfoNCE kernel (bf16 and fp32, largest tile candidate) and both pool kernels, in one
    child process (compiling takes a few seconds each)."""
    result = compile_in_child()
    assert sorted(result) == sorted(EXPECTED)
    for name, shared in result.items():
        assert 0 <= shared <= 227 * 1024, f"{name} needs {shared} bytes of shared memory (H100: 227 KiB)"


EXPECTED = [f"{k}-{d}" for k in ("fwd", "grad", "pool") for d in ("bf16", "fp32")]


def _compile(kernel, types: dict, constexprs: dict, num_warps: int = 4, num_stages: int = 3):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
    source = ASTSource(kernel, signature, constexprs)
    try:
        return triton.compile(
            source,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": num_warps, "num_stages": num_stages},
        )
    except (RuntimeError, FileNotFoundError) as err:  # no ptxas / CUDA backend in this triton build
        if "ptxas" in str(err) or "backend" in str(err).lower():
            print(f"no offline CUDA toolchain: {err}")
            sys.exit(SKIP_EXIT)
        raise


def _main() -> None:
    from tte_fast.kernels import infonce_triton, pool_normalize_triton

    shared = {}
    for dtype, (tiles, upcast, precision) in {
        "bf16": (infonce_triton._HALF_TILES, False, "tf32"),  # UPCAST / PRECISION as the launcher picks
        "fp32": (infonce_triton._FP32_TILES, True, "ieee"),
    }.items():
        types = {
            "q_ptr": f"*{dtype}", "c_ptr": f"*{dtype}", "labels_ptr": "*i64", "lse_ptr": "*fp32",
            "pos_ptr": "*fp32", "ds_ptr": f"*{dtype}", "Nq": "i32", "Nc": "i32", "D": "i32",
            "stride_q": "i32", "stride_c": "i32", "stride_ds": "i32", "scale": "fp32",
            "cols_per_split": "i32", "size_class": "i32",
        }  # fmt: skip
        block_q, block_c, block_d, warps, stages = max(tiles, key=lambda t: t[0] * t[1])
        constexprs = dict(BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_D=block_d)
        constexprs.update(UPCAST=upcast, PRECISION=precision)
        for name, kernel in infonce_triton._KERNELS.items():
            shared[f"{name}-{dtype}"] = _compile(kernel, types, constexprs, warps, stages).metadata.shared
        types = {
            "hidden_ptr": f"*{dtype}", "index_ptr": "*i64", "out_ptr": "*fp32", "inv_norm_ptr": "*fp32",
            "grad_out_ptr": "*fp32", "grad_hidden_ptr": f"*{dtype}", "D": "i32", "stride_b": "i32",
            "stride_t": "i32", "stride_d": "i32", "eps": "fp32",
        }  # fmt: skip
        shared[f"pool-{dtype}"] = max(
            _compile(kernel, types, {"BLOCK_D": 2048}).metadata.shared
            for kernel in (
                pool_normalize_triton._pool_normalize_fwd_kernel,
                pool_normalize_triton._pool_normalize_bwd_kernel,
            )
        )
    print(json.dumps(shared))


if __name__ == "__main__":
    _main()
