"""Which frames of a video are read: the rules of transformers' Qwen-VL video processors.

Two rules exist, and a checkpoint uses its model's: ``"qwen2"`` (Qwen2-VL and Qwen2.5-VL:
``arange(0, total, total / n)`` truncated, ``n`` a multiple of the temporal patch size) and
``"qwen3"`` (Qwen3-VL: ``linspace(0, total - 1, n)`` rounded, ``n`` clamped to [min_frames,
max_frames], which repeats frames of a short video). ``n`` is a fixed ``num_frames`` or follows
``fps``. With neither, every frame is read (transformers' ``do_sample_frames=False``). Where the
source's frame rate is unknown (a list or folder of frames), ``fps`` reads every frame: such a video
is taken as already sampled, where transformers would assume 24 frames a second and thin it out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SAMPLING_STYLES = ("qwen2", "qwen3")


@dataclass(frozen=True)
class FrameSampling:
    """How many frames to read from a video, and the limits on them."""

    style: str = "qwen2"
    num_frames: int | None = None
    fps: float | None = None
    min_frames: int = 4
    max_frames: int = 768
    temporal_patch_size: int = 2

    def __post_init__(self):
        if self.style not in SAMPLING_STYLES:
            raise ValueError(f"frame sampling style must be one of {SAMPLING_STYLES}, got {self.style!r}")
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("num_frames and fps are exclusive: set one of them (or neither: every frame)")
        if self.num_frames is not None and (not isinstance(self.num_frames, int) or self.num_frames < 1):
            raise ValueError(f"num_frames must be an int >= 1, got {self.num_frames!r}")
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"fps must be a number > 0, got {self.fps!r}")
        for name in ("min_frames", "max_frames", "temporal_patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} exceed max_frames {self.max_frames}")

    def indices(self, total: int, source_fps: float | None) -> list[int]:
        """The frame indices to read from a video of ``total`` frames at ``source_fps`` (None: not
        known). Raises ValueError where the processor's rule cannot sample it."""
        if total < 1:
            raise ValueError("the video has no frames")
        if self.num_frames is None and (self.fps is None or source_fps is None):
            return list(range(total))
        if self.style == "qwen3":
            return self._qwen3(total, source_fps)
        return self._qwen2(total, source_fps)

    def _qwen2(self, total: int, source_fps: float | None) -> list[int]:
        t = self.temporal_patch_size
        if self.num_frames is not None:
            n = round(self.num_frames / t) * t
        else:
            cap = math.floor(min(self.max_frames, total) / t) * t
            n = min(max(total / source_fps * self.fps, self.min_frames), cap, total)
            n = math.floor(n / t) * t
        if n < 1:
            raise ValueError(f"{total} frames are too few to sample in temporal patches of {t}")
        if n > total:
            raise ValueError(f"cannot sample {n} frames from a video of {total}")
        # Computed as transformers does (torch's float arange, truncated): its rounding decides ties.
        return torch.arange(0, total, total / n).int().tolist()

    def _qwen3(self, total: int, source_fps: float | None) -> list[int]:
        n = self.num_frames
        if n is None:
            n = int(total / source_fps * self.fps)
            n = min(max(n, self.min_frames), self.max_frames, total)
        return np.linspace(0, total - 1, n).round().astype(int).tolist()
