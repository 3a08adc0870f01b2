"""Image inputs -> uint8 arrays for the C++ preprocessing core.

Accepted per image: a PIL image of any mode (converted to RGB the way transformers converts it:
transparency composited onto white), a uint8 numpy array or CPU tensor (HxW, HxWxC or CxHxW with
C in 1, 3, 4), encoded JPEG/PNG/... bytes, or a file path. Bytes and paths are decoded by Pillow on a
small thread pool (Pillow releases the GIL while decoding). Errors name the offending image's index.
"""

from __future__ import annotations

import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image

from tte_fast.arrow_view import arrow_image_view

CHANNEL_COUNTS = (1, 3, 4)
_ENCODED = (bytes, bytearray, memoryview)


def flatten_images(images) -> list:
    """One flat list of images from a single image or (nested) lists/tuples of them, as HF does;
    a 4-D array or tensor is a batch of images."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in flatten_images(item)]
    if (isinstance(images, np.ndarray) or _is_tensor(images)) and images.ndim == 4:
        return list(images)
    return [images]


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


def pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    """``to_rgb`` as an array. Grey ("L") images stay one channel: Pillow's L -> RGB only
    replicates it, which the C++ core does for free."""
    image = to_rgb(image, keep_grey=True)
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


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def array_to_hwc(array: np.ndarray, index: int, input_data_format=None) -> np.ndarray:
    """A channels-last view (no copy) of a uint8 HxW / HxWxC / CxHxW array."""
    if array.dtype != np.uint8:
        raise TypeError(f"image {index}: expected a uint8 array, got dtype {array.dtype}")
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"image {index}: expected an HxW or HxWxC array, got shape {array.shape}")
    layout = getattr(input_data_format, "value", input_data_format)
    if layout is None:
        # Channels-last is the documented layout; fall back to channels-first only when the last
        # axis cannot be channels (transformers prefers channels-first when both could be).
        layout = (
            "channels_first"
            if array.shape[-1] not in CHANNEL_COUNTS and array.shape[0] in CHANNEL_COUNTS
            else "channels_last"
        )
    if layout == "channels_first":
        array = np.moveaxis(array, 0, -1)
    elif layout != "channels_last":
        raise ValueError(
            f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
        )
    if array.shape[-1] not in CHANNEL_COUNTS:
        raise ValueError(f"image {index}: expected 1, 3 or 4 channels, got shape {array.shape}")
    return array


def decode_image(source, index: int) -> PIL.Image.Image:
    """Decode bytes or a file (fully loaded, no file left open); errors name the image index."""
    what = "bytes"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.startswith(("http://", "https://")):
            raise ValueError(
                f"image {index}: URLs are not fetched; download the image and pass bytes or a path"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {index}: no such image file: {path!r}")
        with open(path, "rb") as f:
            source = f.read()
        what = f"file {path!r}"
    try:
        image = PIL.Image.open(io.BytesIO(source))
        image.load()
        return image
    except Exception as error:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise ValueError(f"image {index}: cannot decode the image {what}: {error}") from error


def _is_encoded(image) -> bool:
    return isinstance(image, (*_ENCODED, str, os.PathLike))


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
    for i, image in zip(encoded, _parallel_map(lambda i: decode_image(images[i], i), encoded, num_threads)):
        decoded[i] = image
    return decoded


def _pil_to_array(image: PIL.Image.Image, index: int) -> np.ndarray:
    try:
        return pil_to_array(image)
    except (ValueError, OSError) as error:  # a mode Pillow cannot convert to RGB
        raise ValueError(f"image {index}: cannot convert mode {image.mode!r} to RGB: {error}") from error


def to_uint8_array(image, index: int, input_data_format=None) -> np.ndarray:
    """One image as a uint8 channels-last array (grey arrays may stay 2-D)."""
    if _is_encoded(image):
        image = decode_image(image, index)
    if isinstance(image, PIL.Image.Image):
        return _pil_to_array(image, index)
    if isinstance(image, np.ndarray):
        return array_to_hwc(image, index, input_data_format)
    if _is_tensor(image):
        return array_to_hwc(image.detach().cpu().numpy(), index, input_data_format)
    expected = "a PIL image, a uint8 array or tensor, bytes or a path"
    raise TypeError(f"image {index}: expected {expected}, got {type(image).__name__}")


def to_uint8_arrays(images: list, num_threads: int, input_data_format=None) -> list[np.ndarray]:
    """Every image as a uint8 channels-last array; decoding and PIL conversions run in parallel."""
    return _parallel_map(
        lambda i: to_uint8_array(images[i], i, input_data_format), list(range(len(images))), num_threads
    )
