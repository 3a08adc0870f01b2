"""Video pixels and grids against transformers: each frame through its Qwen2VLImageProcessorPil (the
image path's reference, resized by Pillow), grouped by its Qwen3-VL video processor's patchify; sizes
from its smart_resize functions. transformers' real video processors (torchvision) when installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import random_pixels
from transformers import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as qwen2_smart_resize
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as qwen3_smart_resize

from tte_fast.video_preprocess import VideoSettings, preprocess_videos

QWEN2 = VideoSettings(style="qwen2", min_pixels=4 * 28 * 28, max_pixels=24 * 28 * 28)
QWEN3 = VideoSettings(
    style="qwen3",
    patch_size=16,
    min_pixels=8 * 32 * 32,
    max_pixels=60 * 32 * 32,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
)


def reference_size(s: VideoSettings, frames: int, height: int, width: int) -> tuple[int, int]:
    factor = s.patch_size * s.merge_size
    if s.style == "qwen2":
        return qwen2_smart_resize(height, width, factor, s.min_pixels, s.max_pixels)
    return qwen3_smart_resize(
        frames, height, width, s.temporal_patch_size, factor, s.min_pixels, s.max_pixels
    )


def reference_video(video: np.ndarray, s: VideoSettings) -> tuple[torch.Tensor, list[int]]:
    """transformers' pixels for one [frames, H, W, 3] video (Pillow resizing, as the image path)."""
    height, width = reference_size(s, *video.shape[:3])
    P = s.patch_size
    # merge_size=1, one frame per row: the rows are the frame's patches in raster order.
    frame_processor = Qwen2VLImageProcessorPil(
        patch_size=P,
        merge_size=1,
        temporal_patch_size=1,
        do_resize=False,
        image_mean=s.image_mean,
        image_std=s.image_std,
    )
    planes = []
    for frame in video:
        resized = PIL.Image.fromarray(frame).resize((width, height), PIL.Image.Resampling.BICUBIC)
        rows = frame_processor(images=[resized], return_tensors="pt")["pixel_values"]
        grid = rows.view(height // P, width // P, 3, P, P)
        planes.append(grid.permute(2, 0, 3, 1, 4).reshape(3, height, width))
    # transformers' own temporal grouping (padding by the last frame) and merge-ordered flattening
    patches, t, h, w = Qwen3VLVideoProcessor.patchify(
        None, torch.stack(planes)[None], P, s.merge_size, s.temporal_patch_size
    )
    return patches[0], [t, h, w]


def random_video(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    return random_pixels(seed, frames * height, width).reshape(frames, height, width, 3)


@pytest.mark.parametrize(
    "settings, shapes",
    [
        (QWEN2, [(5, 70, 100), (4, 130, 48)]),  # an odd frame count: the last frame repeated
        (QWEN3, [(3, 90, 64), (6, 40, 150)]),
    ],
    ids=["qwen2", "qwen3"],
)
def test_pixels_and_grids_equal_transformers(settings, shapes):
    videos = [random_video(i, *shape) for i, shape in enumerate(shapes)]
    pixels, grids = preprocess_videos(videos, settings, num_threads=2)
    expected = [reference_video(v, settings) for v in videos]
    assert grids.tolist() == [grid for _, grid in expected]
    assert pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, torch.cat([p for p, _ in expected]), rtol=0, atol=0)


def test_temporal_patch_holds_consecutive_frames():
    """A row of a temporal patch holds frame 2k then 2k+1, channel by channel (not two copies)."""
    video = np.stack([np.full((56, 56, 3), value, np.uint8) for value in (0, 255, 128)])
    settings = VideoSettings(
        min_pixels=56 * 56, max_pixels=56 * 56, image_mean=[0.0] * 3, image_std=[1.0] * 3
    )
    pixels, grids = preprocess_videos([video], settings)
    assert grids.tolist() == [[2, 4, 4]]
    rows = pixels.view(2, 16, 3, 2, 14 * 14)  # [temporal patch, patch, channel, frame, pixel]
    torch.testing.assert_close(rows[0, :, :, 0], torch.zeros(16, 3, 196))
    torch.testing.assert_close(rows[0, :, :, 1], torch.ones(16, 3, 196))
    torch.testing.assert_close(rows[1, :, :, 0], rows[1, :, :, 1])  # frame 2 and its repeat


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="transformers' video processors need torchvision"
)
@pytest.mark.parametrize("model", ["qwen2", "qwen3"])
def test_close_to_transformers_video_processors(model):
    """transformers' real video processors: frames already at the target size are not resampled, so
    the pixels agree to float rounding; resized ones differ by torchvision's resampling rounding."""
    if model == "qwen2":
        from transformers import Qwen2VLVideoProcessor as processor_class

        settings, exact = QWEN2, (84, 112)
    else:
        processor_class, settings, exact = Qwen3VLVideoProcessor, QWEN3, (64, 96)
    processor = processor_class(
        patch_size=settings.patch_size,
        size={"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels},
        image_mean=settings.image_mean,
        image_std=settings.image_std,
        do_sample_frames=False,
    )
    same_size = [random_video(i, 4, *exact) for i in range(2)]
    smooth = [np.repeat(np.repeat(random_video(i, 4, 20, 30), 4, axis=1), 4, axis=2) for i in range(2)]
    for videos, tolerance in ((same_size, 1e-5), (smooth, None)):
        theirs = processor(videos=videos, return_tensors="pt", cap_pixels_per_frame=False)
        pixels, grids = preprocess_videos(videos, settings)
        assert grids.tolist() == theirs["video_grid_thw"].tolist()
        assert pixels.shape == theirs["pixel_values_videos"].shape
        if tolerance:
            torch.testing.assert_close(pixels, theirs["pixel_values_videos"], rtol=0, atol=tolerance)
        else:
            assert (pixels - theirs["pixel_values_videos"]).abs().mean() < 0.1


def test_bench_video_row_runs():
    """bench/preprocess.py's video points (ours and the reference) run and count frames."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "preprocess.py")
    spec = importlib.util.spec_from_file_location("bench_preprocess_video", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for method in ("hf", "tte_fast"):
        row = bench.run_point("video 640x480", 2, method, 1, "video", repeats=1, device="cpu")
        assert row["images"] == 2 and row["images_per_s"] > 0 and row["source"] == "video"


@pytest.mark.parametrize(
    "sizes, error, message",
    [
        ([(50, 28)], ValueError, "image 0: target size must be positive multiples of .* 28 .* got 50x28"),
        ([(0, 28)], ValueError, "image 0: target size must be positive"),
        ([(28 << 20, 28 << 20)], ValueError, "within the pixel budget"),
        ([(1, 2, 3)], TypeError, r"image 0: target size must be a \(height, width\) pair of ints"),
        (["28x28"], TypeError, r"image 0: target size must be a \(height, width\) pair"),
        ([(28, 28), (28, 28)], ValueError, "target_sizes must hold one .* got 2 for 1 images"),
    ],
)
def test_target_sizes_are_checked_in_cpp(sizes, error, message):
    from tte_fast import _C

    options = dict(patch_size=14, temporal_patch_size=1, merge_size=2, min_pixels=1, max_pixels=1 << 20)
    options.update(do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=False)
    options.update(image_mean=[0.0] * 3, image_std=[1.0] * 3, pass_order=1, num_threads=1)
    with pytest.raises(error, match=message):
        _C.preprocess_batch([random_pixels(0, 30, 40)], target_sizes=sizes, **options)


@pytest.mark.parametrize(
    "slots, sizes, error, message",
    [
        ([(0, 0), (0, 0)], None, ValueError, "do not tile the output at image 1: expected slot 1"),  # twice
        ([(0, 0), (5, 1)], None, ValueError, "image 1: expected slot 1 at row offset 0"),
        ([(6, 0), (6, 1)], None, ValueError, "image 0: row offset 6, expected 0"),  # a gap
        ([(0, 0), (0, 2)], None, ValueError, "expected slot 1"),  # outside temporal_patch_size
        ([(0, 0)], None, ValueError, "frame_slots must hold one .* got 1 for 2 images"),
        ([(0, 0), (0, 1)], [(56, 84), (56, 56)], ValueError, "image 1: its size differs"),
        ([(0, 0), (0, 1), (24, 0)], [(56, 84)] * 3, ValueError, "its temporal patch has 1 frames"),
        ([(0, 0), "x"], None, TypeError, r"image 1: a frame slot must be a \(row offset, slot\) pair"),
    ],
)
def test_frame_slots_are_checked_in_cpp(slots, sizes, error, message):
    """Frames write their temporal copy of shared rows only where the slots tile the output exactly."""
    from tte_fast import _C

    count = max(len(slots), len(sizes or []), 2)
    options = dict(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=1, max_pixels=1 << 20)
    options.update(do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=False)
    options.update(image_mean=[0.0] * 3, image_std=[1.0] * 3, pass_order=1, num_threads=1)
    frames = [random_pixels(k, 30, 40) for k in range(count)]
    with pytest.raises(error, match=message):
        _C.preprocess_batch(frames, target_sizes=sizes or [(56, 84)] * count, frame_slots=slots, **options)


def test_cap_pixels_per_frame_as_transformers():
    """transformers' cap_pixels_per_frame (its resize methods, which need torchvision to run): the
    budget shrinks with the frame count (Qwen2-VL: 90% of max_video_tokens shared by the frames;
    Qwen3-VL: max_video_tokens a frame), floored at 1.05 x min_pixels."""
    from dataclasses import replace

    from tte_fast.video_preprocess import video_size

    qwen2 = replace(QWEN2, cap_pixels_per_frame=True, max_video_tokens=10)
    # 90% of 10 tokens of 28x28, for 4 frames in temporal pairs: 7056 * 2 // 4 = 3528 pixels a frame
    assert (
        video_size(qwen2, 4, 70, 100) == qwen2_smart_resize(70, 100, 28, QWEN2.min_pixels, 3528) == (28, 56)
    )
    assert video_size(QWEN2, 4, 70, 100) == (56, 112)  # uncapped
    assert video_size(replace(qwen2, max_video_tokens=None), 4, 70, 100) == (56, 112)  # 128000 tokens: no cap
    # 13 tokens: int(0.9 * 13 * 784) * 2 // 4 = 4586 pixels a frame
    assert video_size(replace(qwen2, max_video_tokens=13), 4, 70, 100) == (56, 56)
    qwen3 = replace(QWEN3, min_pixels=1024, cap_pixels_per_frame=True, max_video_tokens=2)
    # min(2 tokens of 32x32, 61440 // 8) = 2048 pixels a frame, 8 frames
    assert (
        video_size(qwen3, 8, 200, 300) == qwen3_smart_resize(8, 200, 300, 2, 32, 1024, 2048 * 8) == (32, 32)
    )
    assert video_size(replace(qwen3, cap_pixels_per_frame=False), 8, 200, 300) == (64, 96)
    floored = replace(qwen3, min_pixels=8192)  # the floor, 1.05 x 8192 = 8601 a frame, wins
    assert video_size(floored, 8, 200, 300) == qwen3_smart_resize(8, 200, 300, 2, 32, 8192, 8601 * 8)


def test_video_config_read_and_written_in_transformers_layout(tmp_path):
    import json

    from transformers import Qwen2VLImageProcessorPil

    from tte_fast.video_preprocess import VIDEO_CONFIG_FILE, VideoProcessor

    image_processor = Qwen2VLImageProcessorPil(patch_size=16)
    default = VideoProcessor.for_checkpoint("qwen3_vl", image_processor, str(tmp_path))  # no video config
    assert (default.settings.style, default.settings.patch_size) == ("qwen3", 16)
    assert (default.settings.min_pixels, default.settings.max_pixels) == (128 * 32 * 32, 768 * 32 * 32)
    saved = {  # a Qwen3-VL checkpoint's video_preprocessor_config.json
        "size": {"longest_edge": 25165824, "shortest_edge": 4096},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_sample_frames": True,
        "fps": 2,
        "video_processor_type": "Qwen3VLVideoProcessor",
    }
    (tmp_path / VIDEO_CONFIG_FILE).write_text(json.dumps(saved))
    read = VideoProcessor.for_checkpoint("qwen3_vl", image_processor, str(tmp_path)).settings
    assert (read.min_pixels, read.max_pixels, read.fps, read.num_frames) == (4096, 25165824, 2, None)
    assert read.image_mean == [0.5, 0.5, 0.5] and read.style == "qwen3"
    out = tmp_path / "out"
    out.mkdir()
    VideoProcessor(read).save_pretrained(str(out))
    assert VideoProcessor.for_checkpoint("qwen3_vl", image_processor, str(out)).settings == read
