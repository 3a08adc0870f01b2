"""Qwen-VL video preprocessing on the C++ image core: ``pixel_values_videos`` / ``video_grid_thw``.

A video's sampled frames (``tte_fast.media.video_io``) are resized to one size, rescaled and
normalised by the C++ core exactly as the image path does a picture (Pillow's resampling, HF's
float32 order; all frames of a batch in one threaded call) and written straight into temporal
patches as transformers' video processors lay them out: frames padded to a multiple of
``temporal_patch_size`` by repeating the last, each row one merge-ordered patch of (channel, frame,
y, x) values, each frame writing its own copy of its temporal patch's rows.

The size follows the model: ``"qwen2"`` (Qwen2-VL, Qwen2.5-VL) fits each frame into the pixel
budget; ``"qwen3"`` (Qwen3-VL) fits frames x height x width into it. transformers' own video
processors resize with torchvision, so their pixels differ from these (and from the image path's) by
resampling rounding; sizes, grids, sampling and patch layout are theirs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import TypedDict

import numpy as np
import torch
from transformers import BatchFeature
from transformers.video_utils import VideoMetadata

from tte_fast import _C
from tte_fast.media.frame_sampling import FrameSampling
from tte_fast.media.image_io import InputError
from tte_fast.media.video_io import VideoClip, load_video
from tte_fast.preprocess import _three, available_cores, pillow_pass_order

VIDEO_CONFIG_FILE = "video_preprocessor_config.json"
_HF_CLASS = {"qwen2": "Qwen2VLVideoProcessor", "qwen3": "Qwen3VLVideoProcessor"}
# transformers' default video budgets, in merged patches (28 px for Qwen2-VL, 32 px for Qwen3-VL)
_DEFAULT_BUDGET = {"qwen2": (128, 768), "qwen3": (128, 768)}
_DEFAULT_VIDEO_TOKENS = {"qwen2": 128000, "qwen3": 768}  # their max_video_tokens


class VideoCallKwargs(TypedDict, total=False):
    """What a processor call hands the video processor."""

    video_metadata: list
    return_metadata: bool
    num_threads: int


def sampling_style(model_type: str) -> str:
    """The frame sampling and sizing rule of a Qwen-VL model type."""
    return "qwen3" if model_type.startswith("qwen3") else "qwen2"


@dataclass
class VideoSettings:
    """A checkpoint's video preprocessing: patching, pixel budget, normalisation and frame sampling."""

    style: str = "qwen2"
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    image_mean: list = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    resample: int = 3  # BICUBIC, as transformers' Qwen-VL video processors
    num_frames: int | None = None
    fps: float | None = None
    min_frames: int = 4
    max_frames: int = 768
    # transformers' cap_pixels_per_frame (qwen-vl-utils' rule): the budget shrinks with the frame count
    cap_pixels_per_frame: bool = False
    max_video_tokens: int | None = None  # None: transformers' default for the style


class VideoProcessor:
    """Loads, samples and preprocesses videos for one checkpoint; the processor's ``video_processor``."""

    valid_kwargs = VideoCallKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, settings: VideoSettings):
        self._apply(settings)

    def update(self, **changes) -> None:
        """Change settings in place (``num_frames=8``, ``fps=2.0``, ``max_pixels=...``): how a loaded
        model samples and sizes videos from now on (``model.processor.video_processor.update(...)``)."""
        unknown = sorted(set(changes) - set(VideoSettings.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown video settings {unknown}")
        if changes.get("num_frames") is not None:
            changes.setdefault("fps", None)  # a frame count replaces a rate (they are exclusive)
        elif changes.get("fps") is not None:
            changes.setdefault("num_frames", None)
        self._apply(replace(self.settings, **changes))

    def _apply(self, settings: VideoSettings) -> None:
        """Checked first, so a bad change leaves the processor as it was."""
        if not 0 < settings.min_pixels <= settings.max_pixels:
            raise ValueError(
                f"video min_pixels {settings.min_pixels} must be in (0, max_pixels {settings.max_pixels}]"
            )
        sampling = FrameSampling(
            style=settings.style,
            num_frames=settings.num_frames,
            fps=settings.fps,
            min_frames=settings.min_frames,
            max_frames=settings.max_frames,
            temporal_patch_size=settings.temporal_patch_size,
        )
        self.settings, self.sampling = settings, sampling

    # The attributes transformers' processors read from their video processor.
    @property
    def merge_size(self) -> int:
        return self.settings.merge_size

    @property
    def temporal_patch_size(self) -> int:
        return self.settings.temporal_patch_size

    @property
    def patch_size(self) -> int:
        return self.settings.patch_size

    @classmethod
    def for_checkpoint(
        cls, model_type: str, image_processor, path: str | None = None, **overrides
    ) -> VideoProcessor:
        """The checkpoint's ``video_preprocessor_config.json`` where it has one; else the image
        processor's patching and normalisation with transformers' default video budget."""
        style = sampling_style(model_type)
        patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
        low, high = _DEFAULT_BUDGET[style]
        settings = VideoSettings(
            style=style,
            patch_size=patch,
            temporal_patch_size=int(image_processor.temporal_patch_size),
            merge_size=merge,
            min_pixels=low * (patch * merge) ** 2,
            max_pixels=high * (patch * merge) ** 2,
            image_mean=_three(image_processor.image_mean, "image_mean"),
            image_std=_three(image_processor.image_std, "image_std"),
            rescale_factor=float(image_processor.rescale_factor),
            do_rescale=bool(image_processor.do_rescale),
            do_normalize=bool(image_processor.do_normalize),
        )
        saved = os.path.join(path, VIDEO_CONFIG_FILE) if path and os.path.isdir(path) else None
        if saved and os.path.isfile(saved):
            settings = _read_config(saved, settings)
        return cls(replace(settings, **overrides))

    def save_pretrained(self, directory: str) -> None:
        """``video_preprocessor_config.json`` in transformers' layout (its video processor class reads it)."""
        s = self.settings
        skipped = ("style", "min_pixels", "max_pixels")  # None: transformers' own default
        config = {k: v for k, v in asdict(s).items() if k not in skipped and v is not None}
        config["size"] = {"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels}
        config["video_processor_type"] = _HF_CLASS[s.style]
        config["do_sample_frames"] = s.num_frames is not None or s.fps is not None
        with open(os.path.join(directory, VIDEO_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    # ------------------------------------------------------------------------------------ loading
    def load(self, index: int, video) -> VideoClip:
        """The sampled frames of input ``index``'s video, checked against the size rules now (so
        the error names the input, not its place in a batch)."""
        clip = load_video(index, video, self.sampling)
        try:
            self.target_size(*clip.frames.shape[:3])
        except ValueError as error:
            raise InputError(index, f"video of {clip.frames.shape[0]} frames: {error}") from error
        return clip

    def metadata(self, clip: VideoClip) -> VideoMetadata:
        frames, height, width = clip.frames.shape[:3]
        duration = clip.total_frames / clip.fps if clip.fps else None
        return VideoMetadata(
            total_num_frames=clip.total_frames,
            fps=clip.fps,
            width=width,
            height=height,
            duration=duration,
            frames_indices=list(clip.indices),
        )

    def target_size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """The frames' size after resizing (transformers' smart_resize of the model's video processor)."""
        return video_size(self.settings, frames, height, width)

    # ------------------------------------------------------------------------------ preprocessing
    def __call__(
        self, videos, video_metadata=None, return_tensors=None, num_threads=None, **unused
    ) -> BatchFeature:
        """``videos``: [frames, H, W, 3] uint8 arrays (``VideoClip.frames``); ``video_metadata``
        their ``VideoMetadata`` (passed through for the processor's timestamps and Qwen2.5-VL's
        ``second_per_grid_ts``). Other processor call options are transformers' defaults and unused."""
        videos = [videos] if isinstance(videos, np.ndarray) else list(videos)
        if not videos:
            raise ValueError("no videos given")
        pixel_values, grids = preprocess_videos(videos, self.settings, num_threads)
        data = {"pixel_values_videos": pixel_values, "video_grid_thw": grids}
        if video_metadata is not None:
            data["video_metadata"] = list(video_metadata)
        return BatchFeature(data=data)


def video_size(s: VideoSettings, frames: int, height: int, width: int) -> tuple[int, int]:
    factor = s.patch_size * s.merge_size
    max_pixels = capped_max_pixels(s, frames) if s.cap_pixels_per_frame else s.max_pixels
    if s.style == "qwen2":
        return tuple(_C.smart_resize(height, width, factor, s.min_pixels, max_pixels))
    return qwen3_video_size(frames, height, width, s.temporal_patch_size, factor, s.min_pixels, max_pixels)


def capped_max_pixels(s: VideoSettings, frames: int) -> int:
    """transformers' ``cap_pixels_per_frame`` budget for a video of ``frames`` frames: Qwen2-VL's
    per-frame share of 90% of ``max_video_tokens``; Qwen3-VL's per-frame token cap, times the frames."""
    factor = s.patch_size * s.merge_size
    floor = int(s.min_pixels * 1.05)
    tokens = s.max_video_tokens or _DEFAULT_VIDEO_TOKENS[s.style]
    if s.style == "qwen2":
        total = int(tokens * factor * factor * 0.9)
        return max(min(s.max_pixels, total * s.temporal_patch_size // frames), floor)
    return max(min(tokens * factor * factor, s.max_pixels // frames), floor) * frames


def preprocess_videos(videos: list[np.ndarray], s: VideoSettings, num_threads: int | None = None):
    """(pixel_values_videos float32 [patches, 3*T*P*P], video_grid_thw int64 [videos, 3])."""
    order = pillow_pass_order()
    if order is None:
        raise RuntimeError("the installed Pillow resamples in a way the C++ core does not reproduce")
    T, P = s.temporal_patch_size, s.patch_size
    frames, sizes, slots, grids, row = [], [], [], [], 0
    for video in videos:
        shape = getattr(video, "shape", None)
        if not (isinstance(video, np.ndarray) and video.ndim == 4 and shape[0] and shape[-1] == 3):
            raise ValueError(f"a video must be a [frames, H, W, 3] uint8 array, got {shape or type(video)}")
        height, width = video_size(s, *shape[:3])
        groups, patches = math.ceil(shape[0] / T), (height // P) * (width // P)
        # Frame g*T + t writes copy t of its temporal patch's rows; the last frame fills a short last patch.
        for k in range(groups * T):
            frames.append(video[min(k, shape[0] - 1)])
            slots.append((row + (k // T) * patches, k % T))
        sizes.extend([(height, width)] * (groups * T))
        grids.append([groups, height // P, width // P])
        row += groups * patches
    pixels, _ = _C.preprocess_batch(
        frames,
        patch_size=P,
        temporal_patch_size=T,
        merge_size=s.merge_size,
        min_pixels=s.min_pixels,
        max_pixels=s.max_pixels,
        do_resize=True,
        resample=s.resample,
        do_rescale=s.do_rescale,
        rescale_factor=s.rescale_factor if s.do_rescale else 1.0,
        do_normalize=s.do_normalize,
        image_mean=_three(s.image_mean, "image_mean") if s.do_normalize else [0.0] * 3,
        image_std=_three(s.image_std, "image_std") if s.do_normalize else [1.0] * 3,
        pass_order=order,
        num_threads=available_cores() if num_threads is None else num_threads,
        target_sizes=sizes,
        frame_slots=slots,
    )
    return torch.from_numpy(pixels), torch.tensor(grids, dtype=torch.long)


def qwen3_video_size(
    frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen3-VL's video smart_resize: the budget covers frames x height x width."""
    if frames < temporal_factor:
        raise ValueError(
            f"Qwen3-VL needs at least {temporal_factor} frames (its temporal patch), got {frames}"
        )
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds Qwen-VL's 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


_CONFIG_KEYS = (
    *("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "rescale_factor"),
    *("do_rescale", "do_normalize", "resample", "min_frames", "max_frames"),
    *("cap_pixels_per_frame", "max_video_tokens"),
)


def _read_config(path: str, settings: VideoSettings) -> VideoSettings:
    """Settings overridden by a transformers video processor config's known keys."""
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    size = config.get("size") or {}
    updates = {
        "min_pixels": size.get("shortest_edge") or config.get("min_pixels"),
        "max_pixels": size.get("longest_edge") or config.get("max_pixels"),
    }
    for name in _CONFIG_KEYS:
        updates[name] = config.get(name)
    if config.get("do_sample_frames"):
        updates["num_frames"], updates["fps"] = config.get("num_frames"), config.get("fps")
        if updates["num_frames"] is not None:
            updates["fps"] = None
    return replace(settings, **{k: v for k, v in updates.items() if v is not None})
