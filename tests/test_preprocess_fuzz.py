"""Fuzzing the C++ preprocessing: random shapes, dtypes, channel counts, strides, pixel budgets and
bytes. Every input either gives exactly the HF result or raises ValueError/TypeError naming the
input; nothing crashes (a crash would take the test process down)."""

from __future__ import annotations

import io
import re

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import Qwen2VLImageProcessorPil

from tte_fast.preprocess import ImageProcessor

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def arrays(draw):
    height = draw(st.integers(1, 40))
    width = draw(st.one_of(st.integers(1, 40), st.integers(150, 260)))  # some aspect ratios over 200
    if draw(st.booleans()):
        height, width = width, height
    channels = draw(st.sampled_from([None, 1, 2, 3, 4, 5]))
    dtype = draw(st.sampled_from([np.uint8] * 6 + [np.float32, np.int16, np.bool_]))
    shape = (height, width) if channels is None else (height, width, channels)
    seed = draw(st.integers(0, 2**32 - 1))
    array = np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)
    if draw(st.booleans()):  # a non-contiguous view of the same pixels
        array = np.ascontiguousarray(array[::-1])[::-1]
    if draw(st.booleans()) and min(height, width) > 1:
        array = array[::2, ::-1]
    return array


@st.composite
def budgets(draw):
    patch = draw(st.sampled_from([14, 16]))
    merge = draw(st.sampled_from([1, 2]))
    factor = patch * merge
    min_pixels = draw(st.integers(1, 40)) * factor * factor
    max_pixels = min_pixels + draw(st.integers(0, 200)) * factor * factor
    return dict(patch_size=patch, merge_size=merge, min_pixels=min_pixels, max_pixels=max_pixels)


def _channels_last(array: np.ndarray) -> np.ndarray:
    """The layout ImageProcessor reads: channels last unless only the first axis can be channels."""
    counts = (1, 3, 4)
    if array.ndim == 3 and array.shape[-1] not in counts and array.shape[0] in counts:
        return np.moveaxis(array, 0, -1)
    return array


def _valid(array: np.ndarray) -> bool:
    array = _channels_last(array)
    channels = 1 if array.ndim == 2 else array.shape[-1]
    height, width = array.shape[:2]
    ratio = max(height, width) / min(height, width)
    return array.dtype == np.uint8 and channels in (1, 3, 4) and ratio <= 200


@FUZZ
@given(array=arrays(), budget=budgets(), threads=st.integers(1, 4))
def test_random_arrays_match_hf_or_raise_clearly(array, budget, threads):
    ours = ImageProcessor(**budget)
    if not _valid(array):
        try:
            ours([np.zeros((28, 28, 3), np.uint8), array], num_threads=threads)
        except (ValueError, TypeError) as error:
            # Loading checks name the input; the C++ core's resize limits (aspect ratio) the image.
            assert str(error).startswith(("input 1: ", "image 1: "))
            return
        raise AssertionError(f"accepted an invalid image: shape {array.shape}, dtype {array.dtype}")
    hwc = np.atleast_3d(_channels_last(array))
    reference = Qwen2VLImageProcessorPil(**budget)(hwc, input_data_format="channels_last")
    got = ours(array, num_threads=threads)
    np.testing.assert_array_equal(got["image_grid_thw"], reference["image_grid_thw"])
    np.testing.assert_array_equal(got["pixel_values"], reference["pixel_values"])


def _png_and_jpeg() -> list[bytes]:
    rgb = np.random.default_rng(0).integers(0, 256, (24, 31, 3), dtype=np.uint8)
    out = []
    for fmt, mode in [("PNG", "RGBA"), ("JPEG", "RGB"), ("PNG", "P")]:
        buffer = io.BytesIO()
        PIL.Image.fromarray(rgb).convert(mode).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


ENCODED = _png_and_jpeg()


@st.composite
def damaged_bytes(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(ENCODED)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@FUZZ
@given(data=damaged_bytes())
def test_random_and_damaged_bytes_decode_or_raise_clearly(data):
    try:
        decoded = PIL.Image.open(io.BytesIO(data))
        decoded.load()
    except Exception:
        decoded = None
    if decoded is None:
        try:
            ImageProcessor()(data)
        except ValueError as error:
            assert re.match("input 0: (cannot read image|image bytes are empty)", str(error))
            return
        raise AssertionError("undecodable bytes were accepted")
    try:
        reference = Qwen2VLImageProcessorPil()(decoded)
    except ValueError:  # e.g. an aspect ratio over 200 after damage to the header
        reference = None
    if reference is None:
        with pytest.raises(ValueError, match="(input|image) 0: "):
            ImageProcessor()(data)
        return
    got = ImageProcessor()(data)
    np.testing.assert_array_equal(got["pixel_values"], reference["pixel_values"])


def _extension_kwargs(**overrides) -> dict:
    kwargs = dict(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
        do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, pass_order=1, num_threads=1,
    )  # fmt: skip
    return {**kwargs, **overrides}


@pytest.mark.parametrize(
    "args",
    [
        (100, 100, 28, 3136, -5),  # negative budget: would take the square root of a negative number
        (100, 100, 28, 2**62, 2**63 - 1),  # budgets whose products overflow
        (100, 100, 2**40, 3136, 2**40),  # a factor whose square overflows
        (2**40, 2**40 // 100, 28, 3136, 2**40),  # sides whose product overflows
    ],
)
def test_smart_resize_refuses_values_that_would_overflow(args):
    from tte_fast import _C

    with pytest.raises(ValueError, match="must be"):
        _C.smart_resize(*args)


def test_resize_refuses_an_output_size_whose_product_overflows():
    from tte_fast import _C

    with pytest.raises(ValueError, match="bad sizes"):
        _C.resize_uint8(np.zeros((4, 4, 3), np.uint8), 2**62, 4)  # 2**64 pixels wraps to 0


@pytest.mark.parametrize("do_resize", [True, False])
def test_broadcast_image_with_a_side_over_int32_raises_naming_it(do_resize):
    """A stride-0 view can claim sides beyond Pillow's int: refused before any allocation."""
    from tte_fast import _C

    side = 2**31 + 56
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side // 150 // 56 * 56, 3))
    with pytest.raises(ValueError, match=f"image 1: .*height={side}"):
        _C.preprocess_batch([np.zeros((56, 56, 3), np.uint8), huge], **_extension_kwargs(do_resize=do_resize))
