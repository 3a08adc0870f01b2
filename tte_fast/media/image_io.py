"""Image loading, shared by ``encode`` (through ``tte_fast.inputs``) and the C++-backed
``ImageProcessor``, so both accept the same images and fail with the same messages.

An image is a PIL image of any mode, a uint8 numpy array or CPU tensor (HxW, HxWxC or CxHxW with
C in 1, 3, 4), encoded JPEG/PNG/... bytes, or a file path. RGB is made the way transformers makes
it: transparency composited onto white. Bytes and paths are decoded by Pillow (on a small thread
pool for a batch: Pillow releases the GIL while decoding), fully loaded with no file left open, and
within Pillow's decompression-bomb limit. Every bad image raises ``InputError`` naming its index.
"""

from __future__ import annotations

import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image

from tte_fast.media.arrow_view import arrow_image_view

CHANNEL_COUNTS = (1, 3, 4)
ACCEPTED = "a PIL image, a uint8 numpy array or tensor, a path or bytes"
_ENCODED = (bytes, bytearray, memoryview)


class InputError(ValueError):
    """A bad input; ``index`` is its position in the list the caller was given."""

    def __init__(self, index: int, message: str):
        super().__init__(f"input {index}: {message}")
        self.index = index


class InputTypeError(InputError, TypeError):
    """An input (or part of it) of the wrong type."""


# Qwen-VL smart_resize refuses longer sides over 200 times the shorter (HF and the C++ core alike).
MAX_ASPECT_RATIO = 200


def flatten_images(images) -> list:
    """One flat list of images from a single image or (nested) lists/tuples of them, as HF does;
    a 4-D array or tensor is a batch of images."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in flatten_images(item)]
    if (isinstance(images, np.ndarray) or _is_tensor(images)) and images.ndim == 4:
        return list(images)
    return [images]


# ------------------------------------------------------------------------------------ checks
def check_image(index: int, image, input_data_format=None) -> None:
    """Every check that needs no decoding: the type, an array's dtype, shape and size, a PIL
    image's size, that a path is a file and that bytes are not empty."""
    if _is_encoded(image):
        _check_encoded(index, image)
    elif isinstance(image, PIL.Image.Image):
        _check_size(index, image.height, image.width)
    elif isinstance(image, np.ndarray) or _is_tensor(image):
        array_to_hwc(index, image, input_data_format)
    else:
        raise InputTypeError(index, f"image must be {ACCEPTED}; got {type(image).__name__}")


def _check_size(index: int, height: int, width: int) -> None:
    if height == 0 or width == 0:
        raise InputError(index, f"image has zero size: height={height}, width={width}")


def _check_encoded(index: int, source) -> None:
    if isinstance(source, _ENCODED):
        if memoryview(source).nbytes == 0:
            raise InputError(index, "image bytes are empty")
        return
    path = os.fspath(source)
    if path.startswith(("http://", "https://")):
        raise InputError(index, "URLs are not fetched; download the image and pass bytes or a path")
    if not os.path.isfile(path):
        raise InputError(index, f"image file not found: {path!r}")


def array_to_hwc(index: int, array, input_data_format=None) -> np.ndarray:
    """A channels-last view (no copy) of a uint8 HxW / HxWxC / CxHxW array or CPU tensor."""
    if _is_tensor(array):
        if str(array.dtype) != "torch.uint8":  # checked first: .numpy() fails on bfloat16
            raise InputTypeError(index, f"image array must be uint8, got {array.dtype}")
        array = array.detach().cpu().numpy()
    if array.dtype != np.uint8:
        raise InputTypeError(index, f"image array must be uint8, got {array.dtype}")
    if array.ndim == 3:
        layout = getattr(input_data_format, "value", input_data_format)
        if layout is None:
            # Channels-last is the documented layout; fall back to channels-first only when the last
            # axis cannot be channels (transformers prefers channels-first when both could be).
            last_is_channels = array.shape[-1] in CHANNEL_COUNTS or array.shape[0] not in CHANNEL_COUNTS
            layout = "channels_last" if last_is_channels else "channels_first"
        if layout == "channels_first":
            array = np.moveaxis(array, 0, -1)
        elif layout != "channels_last":
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in CHANNEL_COUNTS):
        raise InputError(
            index, f"image array must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels; got shape {array.shape}"
        )
    _check_size(index, *array.shape[:2])
    return array


# ---------------------------------------------------------------------------------- decoding
def decode_image(index: int, source) -> PIL.Image.Image:
    """Decode bytes or a file, fully loaded (a path is read first, so no file stays open)."""
    _check_encoded(index, source)
    what = "bytes"
    if isinstance(source, (str, os.PathLike)):
        what = f"file {os.fspath(source)!r}"
        try:
            with open(source, "rb") as f:
                source = f.read()
        except OSError as error:
            raise InputError(index, f"cannot read image from {what}: {error}") from error
    try:
        image = PIL.Image.open(io.BytesIO(source))
        image.load()
    except PIL.UnidentifiedImageError as error:  # its message names the buffer object, not the input
        raise InputError(index, f"cannot read image from {what}: not an image format Pillow knows") from error
    except Exception as error:  # Pillow raises many types for bad data (OSError, SyntaxError, bombs, ...)
        raise InputError(index, f"cannot read image from {what}: {error}") from error
    _check_size(index, image.height, image.width)
    return image


def _open(index: int, image, input_data_format=None) -> PIL.Image.Image | np.ndarray:
    """The image checked and decoded: a loaded PIL image, or a channels-last uint8 array."""
    if _is_encoded(image):
        return decode_image(index, image)
    if isinstance(image, PIL.Image.Image):
        _check_size(index, image.height, image.width)
        try:
            image.load()  # a lazily opened file: its read errors are not conversion errors
        except Exception as error:
            raise InputError(index, f"cannot read image: {error}") from error
        return image
    if isinstance(image, np.ndarray) or _is_tensor(image):
        return array_to_hwc(index, image, input_data_format)
    raise InputTypeError(index, f"image must be {ACCEPTED}; got {type(image).__name__}")


def _is_encoded(image) -> bool:
    return isinstance(image, (*_ENCODED, str, os.PathLike))


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


# -------------------------------------------------------------------------------------- RGB
def to_rgb(image: PIL.Image.Image, keep_grey: bool = False) -> PIL.Image.Image:
    """RGB as transformers' ``convert_to_rgb`` makes it: transparency is composited onto white (a
    plain ``convert("RGB")`` would drop alpha and keep whatever colour lies under it). With
    ``keep_grey``, "L" images stay one channel."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB" or (keep_grey and image.mode == "L"):
        return image
    return image.convert("RGB")


def _to_rgb(index: int, image: PIL.Image.Image, keep_grey: bool = False) -> PIL.Image.Image:
    try:
        return to_rgb(image, keep_grey)
    except (ValueError, OSError) as error:  # a mode Pillow cannot convert to RGB
        raise InputError(index, f"cannot convert mode {image.mode!r} to RGB: {error}") from error


def load_image(index: int, image) -> PIL.Image.Image:
    """Any accepted image as an RGB PIL image (what ``encode`` hands the processor). Its aspect
    ratio is checked here, so the error names the input rather than its place in a batch."""
    opened = _open(index, image)
    if isinstance(opened, PIL.Image.Image):
        rgb = _to_rgb(index, opened)
    else:
        grey = opened.ndim == 3 and opened.shape[-1] == 1
        rgb = to_rgb(PIL.Image.fromarray(opened[:, :, 0] if grey else opened))
    ratio = max(rgb.size) / min(rgb.size)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(
            index,
            f"image aspect ratio {ratio:.1f} ({rgb.width}x{rgb.height}) exceeds Qwen-VL's {MAX_ASPECT_RATIO}",
        )
    return rgb


def pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    """``to_rgb`` as an array. Grey ("L") images stay one channel: Pillow's L -> RGB only
    replicates it, which the C++ core does for free."""
    return _pixels(to_rgb(image, keep_grey=True))


def _pixels(image: PIL.Image.Image) -> np.ndarray:
    pixels = pil_pixels_view(image)
    return np.asarray(image) if pixels is None else pixels


def pil_pixels_view(image: PIL.Image.Image) -> np.ndarray | None:
    """An RGB or L image's pixels without a copy (np.asarray(image) copies them through tobytes):
    Pillow exports its memory through the Arrow C data interface, RGB as 4-byte RGBX pixels, so
    the RGB view is strided. None when the export is not a plain single buffer."""
    if not hasattr(image, "__arrow_c_array__"):
        return None
    try:
        return arrow_image_view(image)
    except (ValueError, TypeError, OSError):
        return None


def to_uint8_array(index: int, image, input_data_format=None) -> np.ndarray:
    """Any accepted image as a uint8 channels-last array (grey ones may stay 2-D), for the C++ core."""
    opened = _open(index, image, input_data_format)
    if isinstance(opened, PIL.Image.Image):
        return _pixels(_to_rgb(index, opened, keep_grey=True))
    return opened


# ------------------------------------------------------------------------------------ batches
def _parallel_map(fn, items: list, num_threads: int) -> list:
    """fn over items on up to num_threads threads (Pillow releases the GIL while it decodes and
    copies pixels); the first error, in item order, is raised."""
    if num_threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(num_threads, len(items))) as pool:
        return list(pool.map(fn, items))


def decode_encoded(images: list, num_threads: int) -> list:
    """The same list with bytes and paths replaced by decoded PIL images (decoded in parallel)."""
    encoded = [i for i, image in enumerate(images) if _is_encoded(image)]
    decoded = list(images)
    for i, image in zip(encoded, _parallel_map(lambda i: decode_image(i, images[i]), encoded, num_threads)):
        decoded[i] = image
    return decoded


def to_uint8_arrays(images: list, num_threads: int, input_data_format=None) -> list[np.ndarray]:
    """Every image as a uint8 channels-last array; decoding and PIL conversions run in parallel."""
    return _parallel_map(
        lambda i: to_uint8_array(i, images[i], input_data_format), list(range(len(images))), num_threads
    )
