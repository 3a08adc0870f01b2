"""Image preprocessing throughput: transformers' Qwen2VLImageProcessorPil against tte_fast's C++
ImageProcessor with 1 thread and with all cores, on decoded PIL images and end to end from JPEG bytes.

    python bench/preprocess.py                  # quick: 8 x 640x480 and 2 x 2048x1536
    python bench/preprocess.py --issue-sizes    # 32 x 640x480 and 8 x 2048x1536 (Qwen2-VL default pixels)
    python bench/preprocess.py --json out.json --device cuda   # also copy pixel_values to the GPU

Each point (workload x method) runs in a fresh process so its peak RSS is its own; the time is the
median of --repeats runs after one warm-up. Speedups are against HF in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time

WORKLOADS = {  # name -> (height, width); batch sizes come from the flags
    "640x480": (480, 640),
    "2048x1536": (1536, 2048),
}


def _images(count: int, height: int, width: int):
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    # Gradients plus noise, so JPEG sizes are realistic rather than worst-case noise.
    ramp = (np.arange(width, dtype=np.uint16)[None, :] + np.arange(height, dtype=np.uint16)[:, None]) // 8
    images = []
    for _ in range(count):
        noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint16)
        shift = rng.integers(0, 256, 3, dtype=np.uint16)
        images.append(PIL.Image.fromarray(((ramp[..., None] + noise + shift) % 256).astype(np.uint8)))
    return images


def _jpeg(images) -> list[bytes]:
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def run_point(workload: str, count: int, method: str, threads: int, source: str, repeats: int, device: str):
    """Time one point in this process; returns a result row."""
    import PIL.Image
    import torch
    from transformers import Qwen2VLImageProcessorPil

    from tte_fast.preprocess import ImageProcessor

    height, width = WORKLOADS[workload]
    images = _images(count, height, width)
    encoded = _jpeg(images) if source == "jpeg" else None
    if method == "hf":
        processor = Qwen2VLImageProcessorPil()

        def step():
            inputs = [PIL.Image.open(io.BytesIO(b)) for b in encoded] if encoded else images
            return processor(inputs, return_tensors="pt")
    else:
        processor = ImageProcessor()

        def step():
            return processor(encoded or images, return_tensors="pt", num_threads=threads)

    def timed():
        start, cpu_start = time.perf_counter(), time.process_time()
        out = step()
        if device != "cpu":
            out["pixel_values"].to(device, non_blocking=False)
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start

    timed()  # warm-up
    runs = [timed() for _ in range(repeats)]
    seconds = statistics.median(wall for wall, _ in runs)
    return {
        "workload": workload,
        "images": count,
        "source": source,
        "method": method,
        "threads": threads,
        "median_ms": seconds * 1e3,
        # CPU time of the whole process (all threads): on a shared machine, where other jobs take
        # cores, this shows the work done even when the wall-clock time cannot.
        "median_cpu_ms": statistics.median(cpu for _, cpu in runs) * 1e3,
        "images_per_s": count / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _run_in_fresh_process(args, **point) -> dict:
    command = [sys.executable, __file__, "--point", json.dumps(point), "--repeats", str(args.repeats)]
    command += ["--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark point {point} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--issue-sizes", action="store_true", help="32 x 640x480 and 8 x 2048x1536")
    parser.add_argument("--small-batch", type=int, default=None, help="number of 640x480 images")
    parser.add_argument("--large-batch", type=int, default=None, help="number of 2048x1536 images")
    parser.add_argument("--threads", type=int, default=None, help="'all cores' thread count (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to include the copy of pixel_values")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point, print JSON
    args = parser.parse_args()
    if args.threads is None:
        from tte_fast.preprocess import available_cores

        args.threads = available_cores()
    if args.point:
        print(json.dumps(run_point(**json.loads(args.point), repeats=args.repeats, device=args.device)))
        return

    small = args.small_batch or (32 if args.issue_sizes else 8)
    large = args.large_batch or (8 if args.issue_sizes else 2)
    methods = [("hf", 1), ("tte_fast", 1)] + ([("tte_fast", args.threads)] if args.threads > 1 else [])
    rows = []
    for source in ("decoded", "jpeg"):
        for workload, count in (("640x480", small), ("2048x1536", large)):
            for method, threads in methods:
                point = dict(workload=workload, count=count, method=method, threads=threads, source=source)
                rows.append(_run_in_fresh_process(args, **point))
                baseline = next(r for r in rows if r["method"] == "hf" and r["workload"] == workload
                                and r["source"] == source)  # fmt: skip
                rows[-1]["speedup_vs_hf"] = baseline["median_ms"] / rows[-1]["median_ms"]

    for r in rows:  # thread scaling: against our own 1-thread time on the same workload
        single = next(x for x in rows if x["method"] == r["method"] and x["threads"] == 1
                      and x["workload"] == r["workload"] and x["source"] == r["source"])  # fmt: skip
        r["speedup_vs_1_thread"] = single["median_ms"] / r["median_ms"]
    print(f"image preprocessing, Qwen2-VL default pixels, device={args.device}, cpu_count={os.cpu_count()}")
    print(
        f"{'input':8} {'workload':>14} {'method':>9} {'thr':>3} {'ms/batch':>9} {'img/s':>8} {'vs HF':>6} "
        f"{'vs 1thr':>7} {'cpu ms':>8} {'RSS MB':>7}"
    )
    for r in rows:
        print(
            f"{r['source']:8} {str(r['images']) + 'x' + r['workload']:>14} {r['method']:>9} "
            f"{r['threads']:>3} {r['median_ms']:9.1f} {r['images_per_s']:8.1f} {r['speedup_vs_hf']:5.1f}x "
            f"{r['speedup_vs_1_thread']:6.2f}x {r['median_cpu_ms']:8.1f} {r['peak_rss_mb']:7.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
