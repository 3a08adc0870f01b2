"""Video files (or their bytes) decoded with PyAV (the optional ``video`` extra:
``pip install tte_fast[video]``).

The frame count and rate come from the container where it records them; otherwise one decoding
pass counts the frames. Frames are decoded in order and only the sampled ones are kept as RGB
arrays, so memory holds the sampled frames, not the video.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from tte_fast.media.image_io import InputError

MISSING_DECODER = (
    "decoding video files needs PyAV: pip install 'tte_fast[video]' (or pass the video as a folder "
    "or a list of frames, which need nothing more)"
)


def require_pyav():
    """The ``av`` module; an ImportError naming the ``video`` extra where it is not installed."""
    try:
        import av
    except ImportError as error:
        raise ImportError(MISSING_DECODER) from error
    return av


@dataclass
class VideoFile:
    """One video file (a path, or the file's bytes): its first video stream's frame count and rate,
    read on demand."""

    index: int
    source: str | bytes
    frame_count: int
    fps: float | None

    @property
    def name(self) -> str:
        return f"video file {self.source!r}" if isinstance(self.source, str) else "video bytes"

    @classmethod
    def open(cls, index: int, source: str | bytes) -> VideoFile:
        av = require_pyav()
        name = cls(index, source, 0, None).name
        try:
            with av.open(_file(source)) as container:
                if not container.streams.video:
                    raise InputError(index, f"{name} has no video stream")
                stream = container.streams.video[0]
                fps = float(stream.average_rate) if stream.average_rate else None
                count = stream.frames or sum(1 for _ in container.decode(stream))
        except InputError:
            raise
        except Exception as error:  # PyAV raises its own error types (InvalidDataError, ...) for bad data
            raise InputError(index, f"cannot read {name}: {error}") from error
        if count == 0:
            raise InputError(index, f"{name} has no frames")
        return cls(index, source, count, fps)

    def read(self, indices: list[int]) -> list[np.ndarray]:
        """The frames at ``indices`` (repeats allowed) as RGB uint8 arrays, in the order asked."""
        wanted = set(indices)
        kept: dict[int, np.ndarray] = {}
        try:
            with require_pyav().open(_file(self.source)) as container:
                for k, frame in enumerate(container.decode(video=0)):
                    if k in wanted:
                        kept[k] = frame.to_ndarray(format="rgb24")
                    if len(kept) == len(wanted):
                        break
        except Exception as error:
            raise InputError(self.index, f"cannot decode {self.name}: {error}") from error
        missing = sorted(wanted - set(kept))
        if missing:
            raise InputError(
                self.index,
                f"{self.name} has no frame {missing[0]}: it ended before it (the container "
                f"claims {self.frame_count} frames)",
            )
        return [kept[i] for i in indices]


def _file(source: str | bytes):
    """What PyAV opens: a path, or the bytes as an in-memory file."""
    return io.BytesIO(source) if isinstance(source, bytes) else source
