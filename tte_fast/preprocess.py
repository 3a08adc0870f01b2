"""Qwen2-VL image preprocessing on the C++ extension: a drop-in for transformers'
``Qwen2VLImageProcessorPil`` (Qwen2-VL, Qwen2.5-VL, and Qwen3-VL through patch_size=16).

Same constructor parameters, ``from_pretrained`` / ``save_pretrained`` (the saved config names the
HF class, so HF reads it too) and the same ``pixel_values`` / ``image_grid_thw``, to the byte:
smart-resize, Pillow's resampling reproduced in fixed point, rescale and normalise in the HF float32
order, temporal duplication and merge-ordered patch flattening, for a whole batch on a thread pool
with the GIL released. Settings the C++ core does not cover (``do_convert_rgb=False``, NEAREST or
other non-convolution filters, or a Pillow whose resampling it cannot reproduce) fall back to the HF
implementation, so results never differ.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import PIL.Image
from transformers import BatchFeature, Qwen2VLImageProcessorPil

from tte_fast import _C
from tte_fast.media.image_io import decode_encoded, flatten_images, to_uint8_arrays
from tte_fast.settings.checks import positive_int

HF_IMAGE_PROCESSOR_TYPE = "Qwen2VLImageProcessor"
_CONVOLUTION_FILTERS = (1, 2, 3, 4, 5)  # LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING
_PASS_ORDERS = (1, 0)  # Pillow >= 13 (vertical pass first when the height shrinks most), older Pillow


@functools.cache
def pillow_pass_order() -> int | None:
    """Which order of resampling passes the installed Pillow uses (see csrc/pillow_resample.h),
    found by resizing a probe image whose two orders give different bytes; None if neither matches."""
    probe = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    expected = np.asarray(PIL.Image.fromarray(probe).resize((40, 16), PIL.Image.Resampling.BICUBIC))
    for order in _PASS_ORDERS:
        if np.array_equal(_C.resize_uint8(probe, 16, 40, 3, order), expected):
            return order
    return None


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _three(values, name: str) -> list[float]:
    values = [float(values)] * 3 if np.isscalar(values) else [float(v) for v in values]
    if len(values) != 3:
        raise ValueError(f"{name} must be one value or 3 (one per RGB channel), got {len(values)}")
    return values


class ImageProcessor(Qwen2VLImageProcessorPil):
    """HF ``Qwen2VLImageProcessorPil`` with the per-image work done in C++ on ``num_threads`` threads.

    ``images``: a PIL image (any mode), uint8 numpy array or tensor (HxW, HxWxC channels-last,
    or CxHxW when the last axis cannot be channels; ``input_data_format`` forces a layout), encoded
    bytes or a file path, or (nested) lists of these.

    Images are checked, decoded and made RGB by ``tte_fast.media.image_io``, as ``encode`` does: a bad
    one raises ``tte_fast.inputs.InputError`` (a ValueError; ``InputTypeError`` is also a TypeError)
    whose ``index`` is its position in the flattened list. Errors of the resize itself (an aspect
    ratio over 200, sides not a multiple of patch_size without resizing) come from the C++ core
    and name "image N".

    Where it differs from HF on purpose: it also takes bytes, paths and 2-D arrays; an array whose
    first and last axes could both be channels is read channels-last (HF guesses channels-first);
    unknown arguments, a zero ``image_std`` and float arrays raise instead of being accepted.
    """

    def __call__(self, images, return_tensors=None, num_threads: int | None = None, **kwargs) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, num_threads=num_threads, **kwargs)

    def preprocess(
        self, images, return_tensors=None, num_threads: int | None = None, **kwargs
    ) -> BatchFeature:
        """``pixel_values`` [sum of patches, 3 * temporal_patch_size * patch_size**2] and
        ``image_grid_thw`` [images, 3], as HF's; ``kwargs`` override the processor's settings for
        this call. ``num_threads`` defaults to the cores this process may use; results do not depend on it."""
        unknown = set(kwargs) - set(self.valid_kwargs.__annotations__)
        if unknown:
            raise TypeError(f"unexpected image processor arguments: {sorted(unknown)}")
        num_threads = positive_int("num_threads", available_cores() if num_threads is None else num_threads)
        options = {k: getattr(self, k, None) for k in self.valid_kwargs.__annotations__}
        options.update({k: v for k, v in kwargs.items() if v is not None})
        images = flatten_images(images)
        if not images:
            raise ValueError("no images given")

        resample = options["resample"]
        resample = 2 if resample is None else int(resample)  # HF's PIL backend defaults to BILINEAR
        order = pillow_pass_order()
        if not options["do_convert_rgb"] or (options["do_resize"] and resample not in _CONVOLUTION_FILTERS):
            return self._hf_preprocess(images, return_tensors, num_threads, kwargs)
        if order is None:
            warnings.warn(
                f"Pillow {PIL.__version__} resamples in a way the C++ core does not reproduce; "
                "using the (slower) transformers implementation",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._hf_preprocess(images, return_tensors, num_threads, kwargs)

        min_pixels, max_pixels = self._pixel_budget(options, kwargs)
        do_rescale, do_normalize = bool(options["do_rescale"]), bool(options["do_normalize"])
        # Unused values stay neutral, so they need not be set when their step is off.
        image_mean = _three(options["image_mean"], "image_mean") if do_normalize else [0.0] * 3
        image_std = _three(options["image_std"], "image_std") if do_normalize else [1.0] * 3
        if 0.0 in image_std:
            raise ValueError(f"image_std must not contain 0, got {image_std}")
        arrays = to_uint8_arrays(images, num_threads, options["input_data_format"])
        pixel_values, image_grid_thw = _C.preprocess_batch(
            arrays,
            patch_size=int(options["patch_size"]),
            temporal_patch_size=int(options["temporal_patch_size"]),
            merge_size=int(options["merge_size"]),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            do_resize=bool(options["do_resize"]),
            resample=resample,
            do_rescale=do_rescale,
            rescale_factor=float(options["rescale_factor"]) if do_rescale else 1.0,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            pass_order=order,
            num_threads=num_threads,
        )
        return BatchFeature(
            data={"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}, tensor_type=return_tensors
        )

    @staticmethod
    def _pixel_budget(options: dict, call_kwargs: dict) -> tuple[int, int]:
        size = dict(options["size"] or {})
        min_pixels = call_kwargs.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
        max_pixels = call_kwargs.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
        if not min_pixels or not max_pixels:
            raise ValueError(
                f"size must give 'shortest_edge' and 'longest_edge' (min/max pixels), got {size}"
            )
        return int(min_pixels), int(max_pixels)

    def _hf_preprocess(self, images: list, return_tensors, num_threads: int, kwargs: dict) -> BatchFeature:
        """transformers' own pipeline (bytes and paths decoded first)."""
        return super().preprocess(
            decode_encoded(images, num_threads), return_tensors=return_tensors, **kwargs
        )

    def to_dict(self) -> dict:
        # Name the HF class so AutoImageProcessor / Qwen2VLImageProcessorPil can read the saved file.
        config = super().to_dict()
        config["image_processor_type"] = HF_IMAGE_PROCESSOR_TYPE
        return config
