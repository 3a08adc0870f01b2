"""Image preprocessing throughput: transformers' Qwen2VLImageProcessorPil against tte_fast's C++
ImageProcessor with 1 thread and with all cores, on decoded PIL images and end to end from JPEG bytes;
and video frames: transformers' Qwen2VLVideoProcessor (where torchvision is installed; else its PIL
image processor frame by frame) against tte_fast's video preprocessing (frames/s).

    python bench/preprocess.py                  # quick: 8 x 640x480 and 2 x 2048x1536
    python bench/preprocess.py --target-sizes   # 32 x 640x480 and 8 x 2048x1536 (Qwen2-VL default pixels)
    python bench/preprocess.py --json out.json --device cuda   # also copy pixel_values to the GPU

Each point (workload x method) runs in a fresh process so its peak RSS is its own; the time is the
median of --repeats runs after one warm-up. Speedups are against HF in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

# harness.py lies beside this file; found also when this file is loaded by path (tests). Appended,
# so that bench/ shadows no other module.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WORKLOADS = {  # name -> (height, width); batch sizes come from the flags
    "640x480": (480, 640),
    "2048x1536": (1536, 2048),
    "video 640x480": (480, 640),  # one video of that many frames, Qwen2-VL's default video budget
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
    from transformers import Qwen2VLImageProcessorPil

    from tte_fast.preprocess import ImageProcessor

    height, width = WORKLOADS[workload]
    images = _images(count, height, width)
    encoded = _jpeg(images) if source == "jpeg" else None
    reference = "Qwen2VLImageProcessorPil"
    if source == "video":
        step, reference = _video_step(images, method, threads)
    elif method == "hf":
        processor = Qwen2VLImageProcessorPil()

        def step():
            inputs = [PIL.Image.open(io.BytesIO(b)) for b in encoded] if encoded else images
            return processor(inputs, return_tensors="pt")
    else:
        processor = ImageProcessor()

        def step():
            return processor(encoded or images, return_tensors="pt", num_threads=threads)

    def step_to_device():
        out = step()
        if device != "cpu":
            out["pixel_values" if "pixel_values" in out else "pixel_values_videos"].to(
                device, non_blocking=False
            )

    timing = harness.median_times({"step": step_to_device}, device, repeats)["step"]
    return {
        "workload": workload,
        "images": count,
        "source": source,
        "method": method,
        "reference": reference,
        "threads": threads,
        "median_ms": timing.wall_s * 1e3,
        # CPU time of the whole process (all threads): on a shared machine, where other jobs take
        # cores, this shows the work done even when the wall-clock time cannot.
        "median_cpu_ms": timing.cpu_s * 1e3,
        "images_per_s": count / timing.wall_s,
        "peak_rss_mb": harness.peak_rss() / 2**20,
    }


def _video_step(images, method: str, threads: int):
    """(one video's preprocessing, the reference's name): Qwen2-VL's video settings on both sides."""
    import numpy as np
    import torch
    from transformers import Qwen2VLImageProcessorPil

    from tte_fast.video_preprocess import VideoSettings, preprocess_videos

    settings = VideoSettings()  # transformers' Qwen2-VL video defaults: 128..768 merged patches a frame
    video = np.stack([np.asarray(image) for image in images])

    def ours():
        pixels, grid = preprocess_videos([video], settings, threads)
        return {"pixel_values_videos": pixels, "video_grid_thw": grid}

    if method == "tte_fast":
        return ours, ""
    try:
        from transformers import Qwen2VLVideoProcessor

        processor = Qwen2VLVideoProcessor(do_sample_frames=False)
    except ImportError:  # no torchvision: its PIL image processor per frame (the grouping is a reshape)
        frame_processor = Qwen2VLImageProcessorPil(
            min_pixels=settings.min_pixels, max_pixels=settings.max_pixels, temporal_patch_size=1
        )
        return lambda: frame_processor(images, return_tensors="pt"), "Qwen2VLImageProcessorPil per frame"

    def theirs():
        return processor(videos=[torch.from_numpy(video)], return_tensors="pt", cap_pixels_per_frame=False)

    return theirs, "Qwen2VLVideoProcessor"


def print_rows(rows: list[dict], device: str) -> None:
    harness.print_table(
        ("input", "workload", "method", "thr", "ms/batch", "img/s", "vs HF", "vs 1thr", "cpu ms", "RSS MB"),
        [
            (
                r["source"],
                f"{r['images']}x{r['workload']}",
                r["method"],
                r["threads"],
                f"{r['median_ms']:.1f}",
                f"{r['images_per_s']:.1f}",
                f"{r['speedup_vs_hf']:.1f}x",
                f"{r['speedup_vs_1_thread']:.2f}x",
                f"{r['median_cpu_ms']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
            )
            for r in rows
        ],  # fmt: skip
        title=f"image preprocessing, Qwen2-VL default pixels (video rows: frames; HF: "
        f"{next((r['reference'] for r in rows if r['source'] == 'video' and r['method'] == 'hf'), '-')}), "
        f"device={device}, cpu_count={os.cpu_count()}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(
        parser,
        repeats=5,
        dtype_flag=False,
        device_help="cpu, or cuda to include the copy of pixel_values",
        point=True,
    )
    parser.add_argument(
        "--target-sizes", "--issue-sizes", action="store_true", help="32 x 640x480 and 8 x 2048x1536"
    )
    parser.add_argument("--small-batch", type=int, default=None, help="number of 640x480 images")
    parser.add_argument("--large-batch", type=int, default=None, help="number of 2048x1536 images")
    parser.add_argument("--video-frames", type=int, default=None, help="frames of the 640x480 video")
    parser.add_argument("--threads", type=int, default=None, help="'all cores' thread count (default: all)")
    args = parser.parse_args()
    if args.threads is None:
        from tte_fast.preprocess import available_cores

        args.threads = available_cores()
    if args.point:
        harness.emit_point(run_point(**args.point, repeats=args.repeats, device=args.device))
        return

    small = args.small_batch or (32 if args.target_sizes else 8)
    large = args.large_batch or (8 if args.target_sizes else 2)
    methods = [("hf", 1), ("tte_fast", 1)] + ([("tte_fast", args.threads)] if args.threads > 1 else [])
    flags = harness.forward_flags(args, "repeats", "device")
    frames = args.video_frames or (32 if args.target_sizes else 8)
    rows = []
    for source in ("decoded", "jpeg", "video"):
        workloads = (
            (("640x480", small), ("2048x1536", large)) if source != "video" else (("video 640x480", frames),)
        )
        for workload, count in workloads:
            for method, threads in methods:
                point = dict(workload=workload, count=count, method=method, threads=threads, source=source)
                rows.append(harness.run_point(__file__, point, flags))
                baseline = next(r for r in rows if r["method"] == "hf" and r["workload"] == workload
                                and r["source"] == source)  # fmt: skip
                rows[-1]["speedup_vs_hf"] = baseline["median_ms"] / rows[-1]["median_ms"]

    for r in rows:  # thread scaling: against our own 1-thread time on the same workload
        single = next(x for x in rows if x["method"] == r["method"] and x["threads"] == 1
                      and x["workload"] == r["workload"] and x["source"] == r["source"])  # fmt: skip
        r["speedup_vs_1_thread"] = single["median_ms"] / r["median_ms"]
    print_rows(rows, args.device)
    harness.save_report(args, {"device": args.device, "cpu_count": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
