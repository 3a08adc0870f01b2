"""Benchmark the fused kernels against the naive torch paths.

InfoNCE forward+backward: time (median of --repeats runs, ratio to naive in the same run) and peak
memory above the inputs and their gradients, measured in a fresh process per point (peak RSS on
CPU, torch.cuda.max_memory_allocated on CUDA). On CUDA also: the fused kernel's throughput for its
8*Nq*Nc*D flops as a fraction of the measured bf16 matmul rate, the naive loss at the largest size it
fits, and pool_normalize bandwidth against a device-to-device copy.

    python bench/kernels.py                                   # quick CPU run
    python bench/kernels.py --nq 16384 --nc 16384 --dim 1024  # the CPU target
    python bench/kernels.py --device cuda                     # GPU sizes: 32768 x 32768 x 1536 bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from tte_fast.kernels import infonce_loss, infonce_loss_and_grads, pool_normalize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEMPERATURE = 0.02


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fns: dict, device: str, repeats: int) -> dict:
    """Median wall and process-CPU seconds of each callable. Runs are interleaved (a, b, c, a, b, c,
    ...) so that load from other processes on a shared machine hits every candidate alike."""
    for fn in fns.values():
        fn()  # warm-up: compilation, allocator, BLAS thread pools
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def median_wall(fn, device: str, repeats: int) -> float:
    return median_seconds({"fn": fn}, device, repeats)["fn"][0]


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
    return median_seconds(fns, device, repeats)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Restart the kernel's RSS high-water mark (Linux >= 4.0), so set-up transients do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then includes set-up, which only makes every point look worse


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_point(args) -> dict:
    """Run in a fresh process: extra peak bytes of one forward+backward above inputs + gradients."""
    dtype = DTYPES[args.dtype]
    infonce_step(args.memory_point, *make_pair(64, 64, 32, dtype, args.device))  # lazy library set-up
    q, c = make_pair(args.nq, args.nc, args.dim, dtype, args.device)
    grad_bytes = q.numel() * q.element_size() + c.numel() * c.element_size()
    if args.device == "cuda":
        infonce_step(args.memory_point, q, c)  # Triton autotuning at this size (its buffers would count)
        q.grad = c.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        infonce_step(args.memory_point, q, c)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        reset_peak_rss()
        base = current_rss_bytes()
        infonce_step(args.memory_point, q, c)
        peak = peak_rss_bytes()
    return {"impl": args.memory_point, "extra_bytes": max(peak - base - grad_bytes, 0)}


def measure_memory(impl: str, args) -> int:
    cmd = [sys.executable, __file__, "--memory-point", impl, "--device", args.device, "--dtype", args.dtype]
    cmd += ["--nq", str(args.nq), "--nc", str(args.nc), "--dim", str(args.dim)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_bytes"]


def bench_infonce(args) -> list[dict]:
    dtype = DTYPES[args.dtype]
    q, c = make_pair(args.nq, args.nc, args.dim, dtype, args.device)
    impls = ("naive", "fused", "fused_grads")
    timings = time_infonce(impls, q, c, args.device, args.repeats)
    q = c = None  # free before the memory points run
    rows = []
    for impl in impls:
        wall, cpu = timings[impl]
        rows.append({"impl": impl, "seconds": wall, "cpu_seconds": cpu})
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
    seconds = median_wall(lambda: a @ b, "cuda", 10)
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
        fused_seconds = median_wall(lambda: infonce_step("fused", q, c), "cuda", args.repeats)
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
    for name, (seconds, _) in median_seconds(fns, args.device, max(args.repeats, 10)).items():
        result[f"{name}_gbps"] = moved / seconds / 1e9
    result["fused_vs_copy"] = result["fused_gbps"] / result["copy_gbps"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--nq", type=int, help="queries (default 4096 on CPU, 32768 on CUDA)")
    parser.add_argument("--nc", type=int, help="candidates (default: --nq)")
    parser.add_argument("--dim", type=int, help="feature size (default 512 on CPU, 1536 on CUDA)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool-batch", type=int, help="pool_normalize rows (default 4096 CPU, 65536 CUDA)")
    parser.add_argument("--pool-tokens", type=int, default=8)
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--memory-point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.nq = args.nq or (32768 if cuda else 4096)
    args.nc = args.nc or args.nq
    args.dim = args.dim or (1536 if cuda else 512)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.pool_batch = args.pool_batch or (65536 if cuda else 4096)
    torch.manual_seed(0)
    if args.memory_point:
        print(json.dumps(memory_point(args)))
        return

    results = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "memory_point")}}
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

    print(f"infonce fwd+bwd  Nq={args.nq} Nc={args.nc} D={args.dim} {args.dtype} on {args.device}")
    columns = ("wall s", "x naive", "cpu s", "x naive", "extra MiB", "x naive")
    keys = ("seconds", "time_vs_naive", "cpu_seconds", "cpu_time_vs_naive", "extra_mib", "memory_vs_naive")
    print(f"{'impl':<12}" + "".join(f"{name:>11}" for name in columns))
    for row in results["infonce"]:
        print(f"{row['impl']:<12}" + "".join(f"{row[key]:>11.3f}" for key in keys))
    if cuda:
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
