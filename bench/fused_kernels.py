"""Benchmark the fused kernels against the naive torch paths.

InfoNCE forward+backward: time (median of --repeats runs, ratio to naive in the same run) and peak
memory above the inputs and their gradients, measured in a fresh process per point (peak RSS on
CPU, torch.cuda.max_memory_allocated on CUDA). On CUDA also: the fused kernel's throughput for its
8*Nq*Nc*D flops as a fraction of the measured bf16 matmul rate, the naive loss at the largest size it
fits, and pool_normalize bandwidth against a device-to-device copy.

    python bench/fused_kernels.py                                   # quick CPU run
    python bench/fused_kernels.py --nq 16384 --nc 16384 --dim 1024  # the CPU target
    python bench/fused_kernels.py --device cuda                     # GPU sizes: 32768 x 32768 x 1536 bf16
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from tte_fast.kernels import infonce_loss, infonce_loss_and_grads, pool_normalize

# harness.py lies beside this file; found also when this file is loaded by path (tests). Appended,
# so that bench/ shadows no other module.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DTYPES = harness.DTYPES
TEMPERATURE = 0.02


def make_pair(nq: int, nc: int, dim: int, dtype: torch.dtype, device: str):
    q = F.normalize(torch.randn(nq, dim, device=device), dim=-1).to(dtype).requires_grad_(True)
    c = F.normalize(torch.randn(nc, dim, device=device), dim=-1).to(dtype).requires_grad_(True)
    return q, c


def infonce_step(impl: str, q: torch.Tensor, c: torch.Tensor):
    """One forward+backward; impl is naive (full logits + F.cross_entropy), fused (autograd through
    the device's fast backend: Triton on CUDA, chunked torch on CPU) or fused_grads
    (infonce_loss_and_grads, no autograd)."""
    if impl == "fused_grads":
        return infonce_loss_and_grads(q.detach(), c.detach(), TEMPERATURE)
    q.grad = c.grad = None
    if impl == "naive":  # the plain formula in the input dtype, as training code writes it
        labels = torch.arange(q.shape[0], device=q.device) * (c.shape[0] // q.shape[0])
        F.cross_entropy(q @ c.T / TEMPERATURE, labels).backward()
    else:
        infonce_loss(q, c, TEMPERATURE).backward()


def time_infonce(impls, q, c, device: str, repeats: int) -> dict:
    fns = {impl: (lambda impl=impl, q=q, c=c: infonce_step(impl, q, c)) for impl in impls}
    return harness.median_times(fns, device, repeats)


def memory_point(args) -> dict:
    """Run in a fresh process: extra peak bytes of one forward+backward above inputs + gradients."""
    dtype, impl = DTYPES[args.dtype], args.point["impl"]
    infonce_step(impl, *make_pair(64, 64, 32, dtype, args.device))  # lazy library set-up
    q, c = make_pair(args.nq, args.nc, args.dim, dtype, args.device)
    grad_bytes = q.numel() * q.element_size() + c.numel() * c.element_size()
    if args.device == "cuda":
        infonce_step(impl, q, c)  # Triton autotuning at this size (its buffers would count)
        q.grad = c.grad = None
    peak = harness.measure_peak(lambda: infonce_step(impl, q, c), args.device)
    return {"impl": impl, "extra_bytes": max(peak.growth_bytes - grad_bytes, 0)}


def measure_memory(impl: str, args) -> int:
    flags = harness.forward_flags(args, "device", "dtype", "nq", "nc", "dim")
    return harness.run_point(__file__, {"impl": impl}, flags)["extra_bytes"]


def bench_infonce(args) -> list[dict]:
    dtype = DTYPES[args.dtype]
    q, c = make_pair(args.nq, args.nc, args.dim, dtype, args.device)
    impls = ("naive", "fused", "fused_grads")
    timings = time_infonce(impls, q, c, args.device, args.repeats)
    q = c = None  # free before the memory points run
    rows = []
    for impl in impls:
        timing = timings[impl]
        rows.append({"impl": impl, "seconds": timing.wall_s, "cpu_seconds": timing.cpu_s})
        rows[-1]["extra_mib"] = measure_memory(impl, args) / 2**20
    for row in rows:
        row["time_vs_naive"] = row["seconds"] / rows[0]["seconds"]
        row["cpu_time_vs_naive"] = row["cpu_seconds"] / rows[0]["cpu_seconds"]
        row["memory_vs_naive"] = row["extra_mib"] / max(rows[0]["extra_mib"], 1e-9)
    return rows


def matmul_rate(nq: int, nc: int, dim: int, dtype: torch.dtype) -> float:
    """Measured flop/s of the logits matmul itself, [Nq, D] @ [D, Nc] (the roofline the kernel is
    held to)."""
    a = torch.randn(nq, dim, device="cuda", dtype=dtype)
    b = torch.randn(dim, nc, device="cuda", dtype=dtype)
    seconds = harness.median_seconds(lambda: a @ b, "cuda", 10)
    return 2 * nq * nc * dim / seconds


def largest_naive_fit(args) -> int:
    """Largest square size (halving from Nq) at which the naive loss runs without running out of memory."""
    n = min(args.nq, args.nc)
    while n > 256:
        q = c = None
        try:
            q, c = make_pair(n, n, args.dim, DTYPES[args.dtype], "cuda")
            infonce_step("naive", q, c)
            torch.cuda.synchronize()
            return n
        except torch.OutOfMemoryError:
            q = c = None
            torch.cuda.empty_cache()
            n //= 2
    return n


def bench_cuda_throughput(nq: int, nc: int, args, fused_seconds: float | None) -> dict:
    """Fused forward+backward flop rate (8 * Nq * Nc * D) against the measured matmul rate."""
    dtype = DTYPES[args.dtype]
    if fused_seconds is None:  # not timed by bench_infonce at this size
        q, c = make_pair(nq, nc, args.dim, dtype, "cuda")
        fused_seconds = harness.median_seconds(lambda: infonce_step("fused", q, c), "cuda", args.repeats)
        q = c = None
    rate = matmul_rate(nq, nc, args.dim, dtype)
    result = {"nq": nq, "nc": nc, "fused_seconds": fused_seconds, "matmul_tflops": rate / 1e12}
    result["fused_tflops"] = 8 * nq * nc * args.dim / fused_seconds / 1e12
    result["fraction_of_matmul"] = result["fused_tflops"] / result["matmul_tflops"]
    return result


def bench_pool(args) -> dict:
    """pool_normalize reads B*D input values and writes B*D fp32; compare its effective bandwidth
    with a device copy of the same [B, D] rows (the fastest any pass over those bytes can be)."""
    dtype = DTYPES[args.dtype]
    hidden = torch.randn(args.pool_batch, args.pool_tokens, args.dim, device=args.device, dtype=dtype)
    mask = torch.ones(args.pool_batch, args.pool_tokens, dtype=torch.int64, device=args.device)
    mask[::2, : args.pool_tokens // 2] = 0  # half the rows left padded, half full
    moved = args.pool_batch * args.dim * (hidden.element_size() + 4)
    rows = hidden[:, -1].contiguous()
    copy_dst = torch.empty(args.pool_batch, args.dim, device=args.device, dtype=torch.float32)
    result = {"bytes": moved}
    fns = {
        "copy": lambda: copy_dst.copy_(rows),
        "reference": lambda: pool_normalize(hidden, mask, backend="reference"),
        "fused": lambda: pool_normalize(hidden, mask),
    }
    for name, timing in harness.median_times(fns, args.device, max(args.repeats, 10)).items():
        result[f"{name}_gbps"] = moved / timing.wall_s / 1e9
    result["fused_vs_copy"] = result["fused_gbps"] / result["copy_gbps"]
    return result


def print_results(results: dict, args) -> None:
    harness.print_table(
        ("impl", "wall s", "x naive", "cpu s", "x naive", "extra MiB", "x naive"),
        [[row["impl"]] + [f"{row[key]:.3f}" for key in ROW_KEYS] for row in results["infonce"]],
        title=f"infonce fwd+bwd  Nq={args.nq} Nc={args.nc} D={args.dim} {args.dtype} on {args.device}",
    )
    if "cuda_throughput" in results:
        t = results["cuda_throughput"]
        print(
            f"fused at Nq={t['nq']} Nc={t['nc']}: {t['fused_tflops']:.0f} TFLOP/s for 8*Nq*Nc*D flops = "
            f"{t['fraction_of_matmul']:.2f} of the {args.dtype} matmul rate "
            f"({t['matmul_tflops']:.0f} TFLOP/s)"
        )
    if "pool_normalize" in results:
        p = results["pool_normalize"]
        print(
            f"pool_normalize B={args.pool_batch} T={args.pool_tokens}: fused {p['fused_gbps']:.2f} GB/s, "
            f"reference {p['reference_gbps']:.2f} GB/s, copy {p['copy_gbps']:.2f} GB/s "
            f"(fused/copy {p['fused_vs_copy']:.2f})"
        )


ROW_KEYS = ("seconds", "time_vs_naive", "cpu_seconds", "cpu_time_vs_naive", "extra_mib", "memory_vs_naive")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(
        parser,
        repeats=3,
        devices=["cpu", "cuda"],
        dtype=None,
        dtype_help="default float32 on CPU, bfloat16 on CUDA",
        point=True,
    )
    parser.add_argument("--nq", type=int, help="queries (default 4096 on CPU, 32768 on CUDA)")
    parser.add_argument("--nc", type=int, help="candidates (default: --nq)")
    parser.add_argument("--dim", type=int, help="feature size (default 512 on CPU, 1536 on CUDA)")
    parser.add_argument("--pool-batch", type=int, help="pool_normalize rows (default 4096 CPU, 65536 CUDA)")
    parser.add_argument("--pool-tokens", type=int, default=8)
    parser.add_argument("--skip-pool", action="store_true")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.nq = args.nq or (32768 if cuda else 4096)
    args.nc = args.nc or args.nq
    args.dim = args.dim or (1536 if cuda else 512)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.pool_batch = args.pool_batch or (65536 if cuda else 4096)
    torch.manual_seed(0)
    if args.point:
        harness.emit_point(memory_point(args))
        return

    results = {"config": harness.config(args)}  # the sizes asked for, before any fitting below
    full = (args.nq, args.nc)
    if cuda:  # compare with the naive loss at the largest size it fits
        fit = largest_naive_fit(args)
        if fit < min(full):
            args.nq = args.nc = fit
    results["infonce"] = bench_infonce(args)
    if cuda:
        timed = results["infonce"][1]["seconds"] if (args.nq, args.nc) == full else None
        results["cuda_throughput"] = bench_cuda_throughput(*full, args, timed)
    if not args.skip_pool:
        results["pool_normalize"] = bench_pool(args)
    print_results(results, args)
    harness.save_report(args, results)


if __name__ == "__main__":
    main()
