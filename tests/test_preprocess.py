"""The C++ image preprocessing against transformers' Qwen2VLImageProcessorPil and Pillow itself:
the same resampled bytes, the same pixel_values (compared exactly: within 1e-5 is implied) and the
same image_grid_thw, for many sizes, modes, layouts, settings and thread counts."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
from helpers import assert_same_features, encode_image, random_pixels
from transformers import Qwen2VLImageProcessorPil

from tte_fast import _C
from tte_fast.preprocess import ImageProcessor, pillow_pass_order

QWEN3_SETTINGS = dict(
    patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    min_pixels=65536, max_pixels=16777216,
)  # fmt: skip


def test_pillow_pass_order_is_known():
    assert pillow_pass_order() in (0, 1)


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:  # not Linux: trust the extension's own CPU check
        return _C.avx2_enabled()


@pytest.fixture(params=[True, False], ids=["avx2", "portable"])
def simd_path(request):
    """Run a test on the AVX2 path and on the portable path; the AVX2 case is skipped (not silently
    run on the portable path again) where the CPU lacks AVX2, and must be in use where it has it."""
    if request.param and not cpu_has_avx2():
        pytest.skip("this CPU has no AVX2")
    before, rows = _C.avx2_enabled(), _C.avx2_rows()
    _C.set_avx2_enabled(request.param)
    assert _C.avx2_enabled() is request.param, "the extension did not switch its AVX2 path"
    yield
    _C.set_avx2_enabled(before)
    ran = _C.avx2_rows() - rows
    # The AVX2 case must have run AVX2 code, the portable case none (counted by the extension).
    assert (ran > 0) if request.param else (ran == 0), f"{ran} rows went through the AVX2 code"


@pytest.mark.parametrize("resample", [1, 2, 3, 4, 5])
def test_resize_matches_pillow_bytes(resample, simd_path):
    rng = np.random.default_rng(resample)
    order = pillow_pass_order()
    for trial in range(40):
        h, w = rng.integers(1, 160, 2)
        out_h, out_w = rng.integers(1, 200, 2)
        if trial % 5 == 0:
            out_h = h  # one pass only
        elif trial % 5 == 1:
            out_w = w
        channels = None if trial % 3 == 0 else 3
        image = random_pixels(rng, h, w, channels)
        expected = np.asarray(PIL.Image.fromarray(image).resize((out_w, out_h), resample))
        np.testing.assert_array_equal(_C.resize_uint8(image, out_h, out_w, resample, order), expected)


def test_pass_orders_differ_where_pillow13_reorders():
    image = random_pixels(np.random.default_rng(0), 64, 48)
    assert not np.array_equal(_C.resize_uint8(image, 16, 40, 3, 0), _C.resize_uint8(image, 16, 40, 3, 1))


SIZES = [(1, 1), (2, 3), (27, 29), (480, 640), (97, 13), (1, 150), (600, 4), (28, 5544), (1001, 999)]


@pytest.mark.parametrize("height,width", SIZES)
def test_matches_hf_default_settings(height, width):
    image = PIL.Image.fromarray(random_pixels(np.random.default_rng(height * width), height, width))
    assert_same_features(ImageProcessor()(image), Qwen2VLImageProcessorPil()(image))


def test_matches_hf_on_a_large_image(simd_path):
    image = PIL.Image.fromarray(random_pixels(np.random.default_rng(7), 1536, 2048))  # 3 megapixels
    assert_same_features(ImageProcessor()(image), Qwen2VLImageProcessorPil()(image))


@pytest.mark.parametrize(
    "settings",
    [
        dict(min_pixels=200 * 28 * 28, max_pixels=400 * 28 * 28),  # forces upscaling
        dict(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28),  # forces downscaling
        QWEN3_SETTINGS,
        dict(size={"shortest_edge": 1000, "longest_edge": 30000}, resample=PIL.Image.Resampling.LANCZOS),
        dict(resample=PIL.Image.Resampling.BILINEAR, do_normalize=False),
        dict(resample=PIL.Image.Resampling.HAMMING, do_rescale=False),
        dict(resample=PIL.Image.Resampling.BOX, do_rescale=False, do_normalize=False, temporal_patch_size=3),
        dict(rescale_factor=0.5, image_mean=0.3, image_std=[0.2, 0.7, 1.5], merge_size=1, patch_size=7),
    ],
)
def test_matches_hf_with_settings(settings):
    rng = np.random.default_rng(len(str(settings)))
    images = [PIL.Image.fromarray(random_pixels(rng, h, w)) for h, w in [(45, 301), (333, 250), (8, 8)]]
    assert_same_features(ImageProcessor(**settings)(images), Qwen2VLImageProcessorPil(**settings)(images))


def test_without_resizing_matches_hf():
    rng = np.random.default_rng(6)
    images = [PIL.Image.fromarray(random_pixels(rng, h, w)) for h, w in [(56, 84), (28, 280)]]
    assert_same_features(
        ImageProcessor(do_resize=False)(images), Qwen2VLImageProcessorPil(do_resize=False)(images)
    )


def test_call_time_overrides_match_hf():
    image = PIL.Image.fromarray(random_pixels(np.random.default_rng(3), 120, 90))
    overrides = dict(size={"shortest_edge": 56 * 56, "longest_edge": 8 * 28 * 28}, do_normalize=False)
    assert_same_features(ImageProcessor()(image, **overrides), Qwen2VLImageProcessorPil()(image, **overrides))


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16"]
MODES += ["I;16B", "I;16L", "F"]


def _in_mode(rgb: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    if mode == "PA":
        return rgb.convert("P").convert("PA")
    if mode in ("LA", "RGBA"):  # a real alpha channel, not a constant one
        image = rgb.convert(mode)
        image.putalpha(PIL.Image.fromarray(np.asarray(rgb)[..., 1]))
        return image
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_matches_hf(mode):
    rgb = PIL.Image.fromarray(random_pixels(np.random.default_rng(11), 61, 47))
    image = _in_mode(rgb, mode)
    assert_same_features(ImageProcessor()(image), Qwen2VLImageProcessorPil()(image))


def test_palette_transparency_matches_hf():
    image = PIL.Image.fromarray(random_pixels(np.random.default_rng(5), 50, 70)).convert("P")
    image.info["transparency"] = 7
    assert_same_features(ImageProcessor()(image), Qwen2VLImageProcessorPil()(image))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_numpy_arrays_match_hf(channels):
    array = random_pixels(np.random.default_rng(channels), 90, 70, channels)
    reference = Qwen2VLImageProcessorPil()(array, input_data_format="channels_last")
    assert_same_features(ImageProcessor()(array), reference)


def test_grey_2d_array_is_the_grey_image():
    array = random_pixels(np.random.default_rng(2), 33, 80, None)
    assert_same_features(ImageProcessor()(array), Qwen2VLImageProcessorPil()(PIL.Image.fromarray(array)))


def test_strided_arrays_give_the_contiguous_result():
    rng = np.random.default_rng(4)
    base = random_pixels(rng, 200, 150, 4)
    views = [base[::2, 1::3, :3], base[::-1, ::-1, 2::-1], np.moveaxis(base[:, :, :3], -1, 0), base[:, :, 1]]
    processor = ImageProcessor()
    for view in views:
        layout = "channels_first" if view.shape[0] == 3 else None
        expected = processor(np.ascontiguousarray(view), input_data_format=layout)
        assert_same_features(processor(view, input_data_format=layout), expected)
    broadcast = np.broadcast_to(np.arange(3, dtype=np.uint8), (40, 60, 3))  # zero strides
    assert_same_features(processor(broadcast), processor(np.ascontiguousarray(broadcast)))


def test_channels_first_arrays_match_hf():
    array = random_pixels(np.random.default_rng(8), 3, 50, None).reshape(3, 5, 10).repeat(9, axis=1)
    reference = Qwen2VLImageProcessorPil()(array, input_data_format="channels_first")
    assert_same_features(ImageProcessor()(array, input_data_format="channels_first"), reference)


def test_torch_tensors_are_accepted():
    """One HxWxC tensor, and a 4-D tensor that is a batch of images, as HF reads them."""
    torch = pytest.importorskip("torch")
    array = random_pixels(np.random.default_rng(9), 64, 64)
    assert_same_features(ImageProcessor()(torch.from_numpy(array)), Qwen2VLImageProcessorPil()(array))
    batch = torch.from_numpy(np.stack([array, random_pixels(np.random.default_rng(10), 64, 64)]))
    assert_same_features(ImageProcessor()(batch), Qwen2VLImageProcessorPil()(batch))


def _mixed_batch(rng) -> list[tuple]:
    """(our input, the same image as HF takes it) for every kind of input, size and mode."""
    rgb = PIL.Image.fromarray(random_pixels(rng, 300, 200))
    big = PIL.Image.fromarray(random_pixels(rng, 1100, 1500))
    arrays = [random_pixels(rng, 17, 1000), random_pixels(rng, 5, 5, 4), random_pixels(rng, 1, 199)]
    arrays += [random_pixels(rng, 64, 64, 1), random_pixels(rng, 40, 30, None)]
    jpeg = encode_image(rgb, "JPEG", quality=85)
    pairs = [(rgb, rgb), (big, big), (jpeg, PIL.Image.open(io.BytesIO(jpeg)))]
    pairs += [(image, image) for image in (_in_mode(rgb, m) for m in ("RGBA", "L", "P", "CMYK", "1", "I;16"))]
    pairs += [(array, np.atleast_3d(array)) for array in arrays]
    return pairs


def test_mixed_batch_matches_hf_and_thread_counts_agree():
    pairs = _mixed_batch(np.random.default_rng(12))
    processor = ImageProcessor(min_pixels=8 * 28 * 28, max_pixels=300 * 28 * 28)
    reference = Qwen2VLImageProcessorPil(min_pixels=8 * 28 * 28, max_pixels=300 * 28 * 28)
    expected = reference([hf for _, hf in pairs], input_data_format="channels_last")
    for threads in (1, 2, 3, 16):
        assert_same_features(processor([ours for ours, _ in pairs], num_threads=threads), expected)


def test_nested_lists_and_return_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    images = [PIL.Image.fromarray(random_pixels(rng, 40, 40)) for _ in range(3)]
    nested = ImageProcessor()([[images[0]], [images[1], images[2]]], return_tensors="pt")
    flat = Qwen2VLImageProcessorPil()(images, return_tensors="pt")
    assert isinstance(nested["pixel_values"], torch.Tensor)
    assert torch.equal(nested["pixel_values"], flat["pixel_values"])
    assert torch.equal(nested["image_grid_thw"], flat["image_grid_thw"])
    assert isinstance(ImageProcessor()(images, return_tensors="np")["pixel_values"], np.ndarray)


def test_a_pillow_the_core_cannot_reproduce_fails_the_tests(monkeypatch):
    """Where the C++ resize stops matching Pillow, ImageProcessor falls back to HF with a warning;
    pyproject.toml's filterwarnings makes that warning an error, so the tests here fail instead of
    comparing HF with itself."""
    monkeypatch.setattr("tte_fast.preprocess.pillow_pass_order", lambda: None)
    with pytest.raises(RuntimeWarning, match="does not reproduce"):
        ImageProcessor()(PIL.Image.fromarray(random_pixels(0, 40, 50)))


def test_unsupported_settings_fall_back_to_hf():
    rgb = PIL.Image.fromarray(random_pixels(np.random.default_rng(14), 70, 90))
    for settings in (dict(resample=PIL.Image.Resampling.NEAREST), dict(do_convert_rgb=False)):
        assert_same_features(ImageProcessor(**settings)(rgb), Qwen2VLImageProcessorPil(**settings)(rgb))


@pytest.mark.parametrize("height,width", [(1500, 200), (200, 1500), (3000, 40), (57, 2900)])
def test_banded_resizes_in_both_pass_orders_match_hf(height, width):
    # Heights that shrink much more than widths take Pillow 13's vertical-first order; all of these
    # span several parallel bands of output rows.
    image = PIL.Image.fromarray(random_pixels(np.random.default_rng(height), height, width))
    settings = dict(min_pixels=56 * 56, max_pixels=300 * 28 * 28)
    for threads in (1, 4):
        ours = ImageProcessor(**settings)(image, num_threads=threads)
        assert_same_features(ours, Qwen2VLImageProcessorPil(**settings)(image))
