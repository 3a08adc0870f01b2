"""Input normalisation for ``encode`` / ``think``.

An input is a str (text) or a dict with any of ``text``, ``image``, ``video`` and ``instruction``;
an image is anything ``tte_fast.media.image_io`` loads (a PIL image, a uint8 numpy array or tensor, a
file path or encoded bytes), checked and decoded there exactly as the ``ImageProcessor`` does; a
video is a list of frames, a folder of frame images or a video file (``tte_fast.media.video_io``).
Checks that need no decoding run over the whole list first (``check_input``), so a bad input fails
before any model work; images are decoded batch by batch (``load_input``), videos when their batch
is built (their frames are sampled by the model's video processor). Every error names the input's
index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tte_fast.media.image_io import InputError, InputTypeError, check_image, load_image
from tte_fast.media.video_io import check_video

__all__ = [
    "INPUT_KEYS",
    "EmbedInput",
    "InputError",
    "InputTypeError",
    "as_input_list",
    "check_input",
    "load_image",
    "load_input",
]

INPUT_KEYS = ("text", "image", "instruction", "video")


@dataclass
class EmbedInput:
    """One normalised input; ``image`` is an RGB PIL image once loaded, ``video`` a
    ``tte_fast.media.video_io.VideoClip`` once its batch is built."""

    text: str | None = None
    image: object = None
    instruction: str | None = None
    video: object = None


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
    text, image, instruction, video = (raw.get(k) for k in INPUT_KEYS)
    for name, value in (("text", text), ("instruction", instruction)):
        if value is not None and not isinstance(value, str):
            raise InputTypeError(index, f"{name!r} must be a str, got {type(value).__name__}")
    if (text is None or not text.strip()) and image is None and video is None:
        raise InputError(index, "needs a non-empty 'text' or an 'image' or a 'video' (got none)")
    if image is not None:
        check_image(index, image)
    if video is not None:
        check_video(index, video)
    return EmbedInput(text=text or None, image=image, instruction=instruction or None, video=video)


def load_input(index: int, item: EmbedInput) -> EmbedInput:
    """A copy of ``item`` with its image decoded."""
    if item.image is None:
        return item
    return replace(item, image=load_image(index, item.image))
