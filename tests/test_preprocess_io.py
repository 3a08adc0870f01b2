"""ImageProcessor as a component: encoded inputs, clear errors, saving/loading, and use inside the
HF Qwen-VL processor (image tokens expanded from merge_size and image_grid_thw)."""

from __future__ import annotations

import gc
import io
import json
import os
import threading
import time

import numpy as np
import PIL.Image
import pytest
from helpers import assert_same_features, encode_image, random_image
from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

from tte_fast import _C
from tte_fast.checkpoint.hf_processor import build_processor, default_image_processor
from tte_fast.media.arrow_view import arrow_image_view
from tte_fast.media.image_io import pil_to_array
from tte_fast.preprocess import ImageProcessor
from tte_fast.testing import qwen_tokenizer_dir


@pytest.mark.parametrize(
    "fmt,mode", [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "L")]
)
def test_bytes_and_paths_decode_like_pillow(tmp_path, fmt, mode):
    data = encode_image(random_image(1, 90, 70, mode), fmt)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(data)
    expected = Qwen2VLImageProcessorPil()(PIL.Image.open(io.BytesIO(data)))
    processor = ImageProcessor()
    lazy = PIL.Image.open(io.BytesIO(data))  # not decoded yet
    for source in (data, bytearray(data), memoryview(data), str(path), path, lazy):
        assert_same_features(processor(source), expected)
    assert_same_features(
        processor([data, str(path), data], num_threads=3),
        Qwen2VLImageProcessorPil()([PIL.Image.open(path)] * 3),
    )


@pytest.mark.parametrize(
    "images,error,pattern",
    [
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)], ValueError, "input 1: .*zero size"),
        ([np.zeros((4, 4, 3), np.float32)], TypeError, "input 0: .*uint8.*float32"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)], ValueError, "input 1: .*channels"),
        ([np.zeros((2, 2, 2, 2, 2), np.uint8)], ValueError, "input 0: .*shape"),
        (
            [np.zeros((4, 4, 3), np.uint8)] * 2 + [np.zeros((2, 500, 3), np.uint8)],
            ValueError,
            "image 2: .*aspect",
        ),
        ([b"not an image at all"], ValueError, "input 0: cannot read image from bytes"),
        (
            [encode_image(random_image(0, 60, 80), "PNG")[:40]],
            ValueError,
            "input 0: cannot read image from bytes",
        ),
        ([np.zeros((4, 4, 3), np.uint8), "/no/such/file.png"], ValueError, "input 1: image file not found"),
        (["https://example.com/a.png"], ValueError, "input 0: URLs are not fetched"),
        ([3.5], TypeError, "input 0: image must be a PIL image"),
        ([random_image(0, 60, 80, "La")], ValueError, "input 0: cannot convert mode 'La'"),
        ([], ValueError, "no images"),
    ],
)
def test_bad_inputs_raise_naming_the_image(images, error, pattern):
    with pytest.raises(error, match=pattern):
        ImageProcessor()(images)


def test_bad_settings_raise_clearly():
    image = random_image(0, 60, 80)
    with pytest.raises(ValueError, match="num_threads"):
        ImageProcessor()(image, num_threads=0)
    with pytest.raises(TypeError, match="unexpected image processor arguments"):
        ImageProcessor()(image, colour="red")
    with pytest.raises(ValueError, match="image_std must not contain 0"):
        ImageProcessor(image_std=[0.5, 0.0, 0.5])(image)
    with pytest.raises(ValueError, match="image_mean must be one value or 3"):
        ImageProcessor(image_mean=[0.5, 0.5])(image)
    with pytest.raises(ValueError, match="image 0: .*multiple of patch_size"):
        ImageProcessor(do_resize=False)(image)
    with pytest.raises(ValueError, match="patch_size"):
        ImageProcessor(patch_size=0)(image)
    with pytest.raises(ValueError, match="max_pixels"):
        ImageProcessor(max_pixels=1 << 50)(image)


def test_c_core_rejects_bad_arguments_without_crashing():
    kw = dict(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=3136, max_pixels=1003520,
        do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, pass_order=1, num_threads=2,
    )  # fmt: skip
    with pytest.raises(TypeError, match="image 1: expected a numpy array"):
        _C.preprocess_batch([np.zeros((8, 8, 3), np.uint8), "x"], **kw)
    with pytest.raises(ValueError, match="resample"):
        _C.preprocess_batch([np.zeros((8, 8, 3), np.uint8)], **{**kw, "resample": 0})
    with pytest.raises(ValueError, match="pass_order"):
        _C.preprocess_batch([np.zeros((8, 8, 3), np.uint8)], **{**kw, "pass_order": 7})
    with pytest.raises(ValueError, match="num_threads"):
        _C.preprocess_batch([np.zeros((8, 8, 3), np.uint8)], **{**kw, "num_threads": 0})
    with pytest.raises(ValueError, match="bad sizes"):
        _C.resize_uint8(np.zeros((8, 8, 3), np.uint8), 0, 5)


def test_save_pretrained_is_readable_by_hf(tmp_path):
    ours = ImageProcessor(min_pixels=10 * 28 * 28, max_pixels=90 * 28 * 28, image_mean=[0.1, 0.2, 0.3])
    ours.save_pretrained(tmp_path)
    with open(os.path.join(tmp_path, "preprocessor_config.json")) as f:
        assert json.load(f)["image_processor_type"] == "Qwen2VLImageProcessor"
    hf = Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
    again = ImageProcessor.from_pretrained(tmp_path)
    image = random_image(2, 300, 100)
    assert_same_features(ours(image), hf(image))
    assert_same_features(again(image), hf(image))
    assert again.size == ours.size and again.merge_size == ours.merge_size


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_from_pretrained_checkpoint_matches_hf(tiny_checkpoints, model_type):
    path = tiny_checkpoints[model_type]
    ours = default_image_processor(path)
    assert isinstance(ours, ImageProcessor)
    images = [random_image(3, 200, 130), random_image(4, 31, 77, "L")]
    assert_same_features(ours(images), Qwen2VLImageProcessorPil.from_pretrained(path)(images))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_inside_the_hf_qwen_vl_processor(model_type):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    settings = dict(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    if model_type == "qwen3_vl":
        settings.update(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ours = build_processor(model_type, tokenizer, ImageProcessor(**settings))
    reference = build_processor(model_type, tokenizer, Qwen2VLImageProcessorPil(**settings))
    text = [
        "<|vision_start|><|image_pad|><|vision_end|>What is shown?",
        "two <|vision_start|><|image_pad|><|vision_end|>",
    ]
    images = [random_image(5, 150, 90), random_image(6, 40, 300)]
    got = ours(text=text, images=images, padding=True, return_tensors="pt")
    expected = reference(text=text, images=images, padding=True, return_tensors="pt")
    assert set(got.keys()) == set(expected.keys())
    for key in expected:
        assert (got[key] == expected[key]).all(), key
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = ours.image_processor.merge_size
    assert (got["input_ids"] == image_token).sum() == int(got["image_grid_thw"].prod(-1).sum()) // merge**2


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_no_memory_growth_over_many_calls_and_errors():
    processor = ImageProcessor()
    good = [np.random.default_rng(i).integers(0, 256, (200, 300, 3), dtype=np.uint8) for i in range(3)]
    empty, two_channels = np.zeros((0, 3, 3), np.uint8), np.zeros((5, 5, 2), np.uint8)
    bad_batches = ([good[0], empty], [good[0], two_channels], [b"junk"])

    def churn():
        for _ in range(100):
            processor(good, num_threads=2)
            for bad in bad_batches:
                with pytest.raises(ValueError):
                    processor(bad)

    churn()  # warm up allocator pools
    before = _rss_mb()
    churn()
    churn()
    assert _rss_mb() - before < 16


def test_gil_is_released_during_the_batch():
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (1536, 2048, 3), dtype=np.uint8) for _ in range(4)]
    settings = dict(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=3136, max_pixels=1003520,
        do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, pass_order=1, num_threads=1,
    )  # fmt: skip

    def longest_stall() -> tuple[float, float]:
        """(longest pause of this thread, call duration) while the batch runs in another thread."""
        worker = threading.Thread(target=lambda: _C.preprocess_batch(batch, **settings))
        stamps = [time.perf_counter()]
        worker.start()
        while worker.is_alive():  # this thread keeps running Python only if the call let go of the GIL
            stamps.append(time.perf_counter())
        worker.join()
        return max(np.diff(stamps)), stamps[-1] - stamps[0]

    # A held GIL stalls this thread for the whole call every time; a busy shared machine may
    # deschedule it once in a while, so one clean run out of three is proof enough.
    runs = []
    for _ in range(3):
        stall, duration = longest_stall()
        assert duration > 0.05
        runs.append((stall, duration))
        if stall < 0.5 * duration:
            return
    pytest.fail(f"this thread stalled for most of every call (stall, duration in s): {runs}")


HAS_ARROW_EXPORT = hasattr(PIL.Image.Image, "__arrow_c_array__")


@pytest.mark.skipif(not HAS_ARROW_EXPORT, reason="Pillow < 11.2 has no Arrow export")
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_arrow_view_is_the_image_memory(mode):
    image = random_image(8, 37, 53, mode)
    expected = np.asarray(image).copy()
    view = arrow_image_view(image)
    assert not view.flags.owndata
    np.testing.assert_array_equal(view, expected)
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 0  # writing through the view would edit the caller's image
    del image
    gc.collect()
    filler = [np.full((37, 53, 4), 7, np.uint8) for _ in range(50)]  # reuse of freed memory would show
    np.testing.assert_array_equal(view, expected)
    assert filler


def test_pixels_fall_back_to_a_copy_when_the_export_fails(monkeypatch):
    image = random_image(9, 20, 30)
    expected = np.asarray(image).copy()

    def refuse(*args, **kwargs):
        raise ValueError("Image rows are not contiguous in memory.")

    monkeypatch.setattr(PIL.Image.Image, "__arrow_c_array__", refuse, raising=False)
    np.testing.assert_array_equal(pil_to_array(image), expected)
    assert_same_features(ImageProcessor()(image), Qwen2VLImageProcessorPil()(image))
