"""Input normalisation for ``encode`` / ``think``.

An input is a str (text) or a dict with any of ``text``, ``image`` and ``instruction``; an image is
a PIL image, a numpy ``HxWxC`` (or ``HxW``) uint8 array, a file path or encoded bytes. Checks that
need no decoding run over the whole list first (``check_input``), so a bad input fails before any
model work; images are decoded batch by batch (``load_input``). Every error names the input's index.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tte_fast.image_io import to_rgb

INPUT_KEYS = ("text", "image", "instruction")


class InputError(ValueError):
    """A bad input; ``index`` is its position in the list given to ``encode`` / ``think``."""

    def __init__(self, index: int, message: str):
        super().__init__(f"input {index}: {message}")
        self.index = index


class InputTypeError(InputError, TypeError):
    """An input (or part of it) of the wrong type."""


@dataclass
class EmbedInput:
    """One normalised input; ``image`` is an RGB PIL image once loaded."""

    text: str | None = None
    image: object = None
    instruction: str | None = None


def as_input_list(inputs) -> list:
    """The inputs as a list; a single str or dict counts as a list of one."""
    if isinstance(inputs, (str, dict)):
        return [inputs]
    if isinstance(inputs, Sequence) and not isinstance(inputs, (bytes, bytearray)):
        return list(inputs)
    raise TypeError(f"inputs must be a list of str or dict, got {type(inputs).__name__}")


def check_input(index: int, raw) -> EmbedInput:
    """Validate one raw input without decoding its image."""
    if isinstance(raw, str):
        if not raw.strip():
            raise InputError(index, "empty text")
        return EmbedInput(text=raw)
    if not isinstance(raw, dict):
        raise InputTypeError(index, f"expected a str or a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(INPUT_KEYS))
    if unknown:
        raise InputError(index, f"unknown keys {unknown}; an input dict takes {list(INPUT_KEYS)}")
    text, image, instruction = (raw.get(k) for k in INPUT_KEYS)
    for name, value in (("text", text), ("instruction", instruction)):
        if value is not None and not isinstance(value, str):
            raise InputTypeError(index, f"{name!r} must be a str, got {type(value).__name__}")
    if (text is None or not text.strip()) and image is None:
        raise InputError(index, "needs a non-empty 'text' or an 'image' (got neither)")
    if image is not None:
        _check_image(index, image)
    return EmbedInput(text=text or None, image=image, instruction=instruction or None)


def _check_image(index: int, image) -> None:
    if isinstance(image, Image.Image):
        return
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputTypeError(index, f"image array must be uint8, got {image.dtype}")
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            raise InputError(index, f"image array must be HxW or HxWxC with C in 1, 3, 4; got {image.shape}")
        if min(image.shape[:2]) == 0:
            raise InputError(index, f"image array is empty: shape {image.shape}")
        return
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise InputError(index, f"image file not found: {os.fspath(image)!r}")
        return
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise InputError(index, "image bytes are empty")
        return
    raise InputTypeError(
        index, f"image must be a PIL image, a uint8 numpy array, a path or bytes; got {type(image).__name__}"
    )


def load_image(index: int, image) -> Image.Image:
    """Decode a checked image to an RGB PIL image."""
    if isinstance(image, np.ndarray):
        array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        return to_rgb(Image.fromarray(array))
    if isinstance(image, Image.Image):
        rgb = to_rgb(image)
    else:
        source = io.BytesIO(bytes(image)) if isinstance(image, (bytes, bytearray, memoryview)) else image
        try:
            # Closed on exit: PIL keeps multi-frame files (GIF, TIFF) open after load().
            with Image.open(source) as opened:
                rgb = to_rgb(opened)
                if rgb is opened:  # already RGB: keep a loaded copy, the file image closes on exit
                    rgb = opened.copy()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            what = "bytes" if isinstance(source, io.BytesIO) else repr(os.fspath(image))
            raise InputError(index, f"cannot read image from {what}: {e}") from e
    if min(rgb.size) == 0:
        raise InputError(index, f"image has zero size {rgb.size}")
    return rgb


def load_input(index: int, item: EmbedInput) -> EmbedInput:
    """A copy of ``item`` with its image decoded."""
    if item.image is None:
        return item
    return EmbedInput(text=item.text, image=load_image(index, item.image), instruction=item.instruction)
