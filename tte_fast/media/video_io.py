"""Video loading for ``encode``: a video is a list of frames, a folder of frame images or a file.

Frames are any images ``tte_fast.media.image_io`` loads (PIL images, uint8 arrays, paths, bytes);
a 4-D uint8 array or tensor (frames x H x W x C) is a list of frames too. A folder's frames are its
image files in natural order (``frame_2`` before ``frame_10``); a file (or its encoded bytes) is
decoded with PyAV (the ``video`` extra). Only the sampled frames are decoded (``FrameSampling``).
Every bad video raises ``InputError`` naming its input index: not found, empty, unreadable, frames
of different sizes, or more frames than the limit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from tte_fast.media.frame_sampling import FrameSampling
from tte_fast.media.image_io import InputError, InputTypeError, _is_tensor, check_image, load_image

VIDEO_ACCEPTED = (
    "a list of frames (images), a 4-D uint8 array, a folder of frame images, a video file path or its bytes"
)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class VideoClip:
    """The sampled frames of one video, as transformers' video processors see them."""

    frames: np.ndarray  # [frames, height, width, 3] uint8, RGB
    total_frames: int  # frames in the source
    fps: float | None  # the source's frame rate (None: unknown, as for a list of frames)
    indices: list[int]  # which source frames ``frames`` are


def check_video(index: int, video) -> None:
    """Every check that needs no decoding: the type, that a list is not empty (and holds images),
    that a path exists."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise InputError(index, "video has no frames (an empty list)")
        for frame in video:
            check_image(index, frame)
    elif _is_array(video):
        _check_frames_array(index, video)
    elif isinstance(video, (bytes, bytearray, memoryview)):
        if memoryview(video).nbytes == 0:
            raise InputError(index, "video bytes are empty")
        _require_decoder()
    elif isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if path.startswith(("http://", "https://")):
            raise InputError(index, "video URLs are not fetched; download it and pass a file or frames")
        if not os.path.exists(path):
            raise InputError(index, f"video not found: {path!r}")
        if not os.path.isdir(path):
            _require_decoder()
    else:
        raise InputTypeError(index, f"video must be {VIDEO_ACCEPTED}; got {type(video).__name__}")


def load_video(index: int, video, sampling: FrameSampling) -> VideoClip:
    """The video's sampled frames, RGB, all of one size."""
    check_video(index, video)
    total, fps, read = _source(index, video)
    try:
        indices = sampling.indices(total, fps)
    except ValueError as error:
        raise InputError(index, f"video of {total} frames: {error}") from error
    if len(indices) > sampling.max_frames:
        raise InputError(
            index,
            f"video has {len(indices)} frames to read, more than max_frames={sampling.max_frames}; "
            "sample fewer (num_frames or fps)",
        )
    frames = read(indices)
    shape = frames[0].shape
    for k, frame in enumerate(frames):
        if frame.shape != shape:
            raise InputError(
                index,
                f"video frames differ in size: frame 0 is {shape[1]}x{shape[0]}, "
                f"frame {indices[k]} is {frame.shape[1]}x{frame.shape[0]}",
            )
    return VideoClip(np.stack(frames), total, fps, list(indices))


def frame_files(index: int, folder: str) -> list[str]:
    """A folder's frame images in natural order (digits compared as numbers)."""
    try:
        names = os.listdir(folder)
    except OSError as error:
        raise InputError(index, f"cannot list video frames in {folder!r}: {error}") from error
    names = [n for n in names if os.path.splitext(n)[1].lower() in FRAME_EXTENSIONS]
    if not names:
        raise InputError(
            index, f"video folder {folder!r} has no frame images ({', '.join(FRAME_EXTENSIONS)})"
        )
    names.sort(key=lambda n: [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", n)])
    return [os.path.join(folder, n) for n in names]


def _source(index: int, video):
    """(frame count, frame rate or None, read(indices) -> RGB uint8 arrays) of a checked video."""
    if isinstance(video, (list, tuple)) or _is_array(video):
        frames = list(video)
        return len(frames), None, lambda indices: [_rgb(index, frames[i]) for i in indices]
    from tte_fast.media.pyav_decode import VideoFile

    if isinstance(video, (bytes, bytearray, memoryview)):
        source = VideoFile.open(index, bytes(video))
        return source.frame_count, source.fps, source.read
    path = os.fspath(video)
    if os.path.isdir(path):
        files = frame_files(index, path)
        return len(files), None, lambda indices: [_rgb(index, files[i]) for i in indices]
    source = VideoFile.open(index, path)
    return source.frame_count, source.fps, source.read


def _require_decoder() -> None:
    """A missing decoder is named before any model work."""
    from tte_fast.media.pyav_decode import require_pyav

    require_pyav()


def _rgb(index: int, frame) -> np.ndarray:
    return np.asarray(load_image(index, frame))


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or _is_tensor(value)


def _check_frames_array(index: int, video) -> None:
    if video.ndim != 4:
        raise InputError(
            index, f"a video array must be frames x H x W x C (4-D); got shape {tuple(video.shape)}"
        )
    if video.shape[0] == 0:
        raise InputError(index, "video has no frames (an array of 0 frames)")
    check_image(index, video[0])
