"""Split a model-input batch into chunks of whole samples.

A batch is a tensor split on dim 0, or a dict (e.g. a processor's ``BatchFeature``) whose values
are split per sample:

- tensors and lists whose first dimension is the batch size are split on it;
- Qwen-VL media are per-image, not per-sample: ``pixel_values`` [sum of patches, C*T*P*P] and
  ``image_grid_thw`` [n_images, 3] (likewise ``pixel_values_videos`` / ``video_grid_thw``, and
  Qwen2.5-VL's ``second_per_grid_ts``, one per video) are split so each chunk keeps exactly its own
  samples' images and patches;
- any other value (None, flags, strings) is handed unchanged to every chunk.

Which images belong to which sample (samples may hold zero, one or several images, in order):

1. an optional ``"image_counts"`` (``"video_counts"``) entry, one int per sample, says it
   directly; this bookkeeping entry is removed from the chunks the encoder sees;
2. otherwise it is read from the processor's ``mm_token_type_ids`` (1 marks image tokens, 2 video
   tokens): a sample's patch count is its media-token count times the merge factor, which is
   total patches / total media tokens, and the images are consumed in order to match it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tte_fast.settings.checks import positive_int

# Per-video values besides the patches and grids (one entry per video_grid_thw row).
_PER_VIDEO = ("second_per_grid_ts",)
# (patch tensor, grid tensor, mm_token_type_ids value, optional per-sample count key)
_MEDIA = (
    ("pixel_values", "image_grid_thw", 1, "image_counts"),
    ("pixel_values_videos", "video_grid_thw", 2, "video_counts"),
)
_COUNT_KEYS = tuple(m[3] for m in _MEDIA)


def _first_dim(value) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.dim() > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def batch_size(inputs) -> int:
    """Number of samples in ``inputs`` (a tensor, or a dict as described in the module doc)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("a tensor batch must have a batch dimension; got a 0-d tensor")
        return inputs.shape[0]
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")
    media_keys = {k for m in _MEDIA for k in m[:2]} | set(_COUNT_KEYS)
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        if _first_dim(inputs.get(key)) is not None:
            return _first_dim(inputs[key])
    for key, value in inputs.items():
        if key not in media_keys and _first_dim(value) is not None:
            return _first_dim(value)
    raise ValueError(f"cannot tell the batch size of a dict with keys {sorted(inputs)}: no per-sample tensor")


def _media_per_sample(
    inputs: Mapping, n: int, patch_key: str, grid_key: str, token_type: int, count_key: str
):
    """Per-sample (image count, patch count) lists for one media kind."""
    grid = inputs[grid_key]
    if not (isinstance(grid, torch.Tensor) and grid.dim() == 2 and grid.shape[1] == 3):
        raise ValueError(
            f"{grid_key} must be an [n_images, 3] tensor, got {getattr(grid, 'shape', type(grid))}"
        )
    patches_per_image = grid.long().prod(dim=1).tolist()
    total = sum(patches_per_image)
    if inputs.get(patch_key) is not None and inputs[patch_key].shape[0] != total:
        raise ValueError(
            f"{patch_key} has {inputs[patch_key].shape[0]} rows but {grid_key} describes {total} patches"
        )
    if inputs.get(count_key) is not None:
        counts = [int(c) for c in torch.as_tensor(inputs[count_key]).reshape(-1).tolist()]
        if len(counts) != n or min(counts, default=0) < 0 or sum(counts) != len(patches_per_image):
            raise ValueError(
                f"{count_key} must hold {n} non-negative counts summing to {len(patches_per_image)} "
                f"({grid_key} rows), got {counts}"
            )
        patches, start = [], 0
        for c in counts:
            patches.append(sum(patches_per_image[start : start + c]))
            start += c
        return counts, patches
    if not patches_per_image:
        return [0] * n, [0] * n
    token_types = inputs.get("mm_token_type_ids")
    if not isinstance(token_types, torch.Tensor):
        raise ValueError(
            f"splitting {grid_key} needs either a per-sample {count_key!r} entry or the processor's "
            "'mm_token_type_ids' to tell which sample each image belongs to"
        )
    tokens = (token_types == token_type).sum(dim=1).tolist()
    if sum(tokens) == 0 or total % sum(tokens):
        raise ValueError(
            f"{sum(tokens)} media tokens in mm_token_type_ids do not match {total} patches in {grid_key}"
        )
    merge = total // sum(tokens)
    counts, patches, image = [], [], 0
    for i, t in enumerate(tokens):
        want, got, c = t * merge, 0, 0
        while got < want and image < len(patches_per_image):
            got += patches_per_image[image]
            image += 1
            c += 1
        if got != want:
            raise ValueError(
                f"sample {i} has {t} media tokens, which no whole number of its {grid_key} rows fills"
            )
        counts.append(c)
        patches.append(got)
    return counts, patches


def _cut(value, sizes: list[int]) -> list:
    if isinstance(value, torch.Tensor):
        return list(value.split(sizes, dim=0))
    out, start = [], 0
    for s in sizes:
        out.append(value[start : start + s])
        start += s
    return out


def split_inputs(inputs, chunk_size: int) -> list:
    """Split ``inputs`` into consecutive chunks of at most ``chunk_size`` samples."""
    positive_int("chunk_size", chunk_size)
    n = batch_size(inputs)
    if isinstance(inputs, torch.Tensor):
        return list(inputs.split(chunk_size, dim=0))
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    sample_sizes = [e - s for s, e in bounds]
    pieces: dict[str, list] = {}
    for patch_key, grid_key, token_type, count_key in _MEDIA:
        if inputs.get(grid_key) is None:
            continue
        counts, patches = _media_per_sample(inputs, n, patch_key, grid_key, token_type, count_key)
        image_sizes = [sum(counts[s:e]) for s, e in bounds]
        patch_sizes = [sum(patches[s:e]) for s, e in bounds]
        # A chunk without images gets None, as the processor gives for an image-free batch.
        pieces[grid_key] = [
            g if c else None for g, c in zip(_cut(inputs[grid_key], image_sizes), image_sizes)
        ]
        if inputs.get(patch_key) is not None:
            cut = _cut(inputs[patch_key], patch_sizes)
            pieces[patch_key] = [p if c else None for p, c in zip(cut, image_sizes)]
        for key in _PER_VIDEO if grid_key == "video_grid_thw" else ():
            if inputs.get(key) is not None:
                pieces[key] = [v if c else None for v, c in zip(_cut(inputs[key], image_sizes), image_sizes)]
    for key, value in inputs.items():
        if key in pieces or key in _COUNT_KEYS:
            continue
        if _first_dim(value) == n:
            pieces[key] = _cut(value, sample_sizes)
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            raise ValueError(f"input {key!r} has first dimension {value.shape[0]}, not the batch size {n}")
    chunks = []
    for i in range(len(bounds)):
        chunk = {
            key: (pieces[key][i] if key in pieces else value)
            for key, value in inputs.items()
            if key not in _COUNT_KEYS
        }
        chunks.append(chunk)
    return chunks
