"""Fingerprints that key the evaluation caches: of model weights, settings and inputs.

A weight fingerprint reads every parameter and buffer where it lies: per tensor, its name, dtype,
shape and a digest of its raw bits. On the CPU that is SHA-1 over the bytes (about 0.6 GB/s here);
on an accelerator it is a position-weighted checksum computed in place (the sum of bits_i * (2i + 1)
times an odd constant, modulo 2^64, with two constants), so no checkpoint is copied to the host to be
hashed. Either way, changing any single value changes the fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import numpy as np
import torch

_CHUNK = 1 << 22
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MULT = (0x9E3779B97F4A7C15 - (1 << 64), 0xC2B2AE3D27D4EB4F - (1 << 64))  # as signed int64


def digest(*parts) -> str:
    """Hex BLAKE2b of the JSON of ``parts`` (keys sorted; other objects by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _bits(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    return flat.view(_INT_VIEW[flat.element_size()])


def tensor_digest(t: torch.Tensor) -> str:
    """A digest of ``t``'s raw bits: SHA-1 of the bytes on CPU, :func:`tensor_checksum` elsewhere."""
    bits = _bits(t)
    if bits.device.type == "cpu":
        return hashlib.sha1(memoryview(bits.numpy())).hexdigest()
    first, second = tensor_checksum(bits)
    return f"{first:x}-{second:x}"


def tensor_checksum(t: torch.Tensor) -> tuple[int, int]:
    """Two position-weighted sums (mod 2^64) of ``t``'s raw bits, computed on its own device."""
    bits = _bits(t)
    sums = [torch.zeros((), dtype=torch.int64, device=bits.device) for _ in _MULT]
    for start in range(0, bits.numel(), _CHUNK):
        chunk = bits[start : start + _CHUNK].to(torch.int64)
        position = torch.arange(start, start + chunk.numel(), device=chunk.device, dtype=torch.int64) * 2 + 1
        for s, mult in zip(sums, _MULT):
            s += (chunk * (position * mult)).sum()
    return tuple(int(s.item()) for s in sums)


def module_fingerprint(module: torch.nn.Module | None) -> str:
    """Fingerprint of a module's parameters and buffers (names, dtypes, shapes and values)."""
    if module is None:
        return "none"
    h = hashlib.blake2b(digest_size=20)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{tensor_digest(t)};".encode())
    return h.hexdigest()


def _image_bytes(image) -> bytes:
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        return f"{image.dtype}{image.shape}".encode() + np.ascontiguousarray(image).tobytes()
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL
        return f"{image.mode}{image.size}".encode() + image.tobytes()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(image))
    return buffer.getvalue()


def input_fingerprint(item) -> str:
    """Fingerprint of one model input (str or dict): its text, instruction, image and video content."""
    if isinstance(item, str):
        item = {"text": item}
    h = hashlib.blake2b(digest_size=16)
    for key in ("text", "instruction"):
        h.update(f"{key}={item.get(key)!r};".encode())
    image = item.get("image")
    if image is not None:
        h.update(b"image=")
        h.update(hashlib.blake2b(_image_bytes(image), digest_size=16).digest())
    video = item.get("video")
    if video is not None:
        h.update(b"video=")
        for frame in _video_frames(video):
            h.update(hashlib.blake2b(_image_bytes(frame), digest_size=16).digest())
    return h.hexdigest()


def _video_frames(video) -> list:
    """What a video's content is read from: its frames (a folder's frame files), or its file."""
    if isinstance(video, (str, os.PathLike)) and os.path.isdir(video):
        from tte_fast.media.video_io import frame_files

        return frame_files(0, os.fspath(video))
    if isinstance(video, (str, os.PathLike, bytes)):
        return [video]
    return list(video)


def _public(config: dict) -> dict:
    """A HF config dict without fields that name where it came from rather than what it is."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}


def unified_parts(model) -> dict:
    """What a :class:`~tte_fast.UnifiedTTE`'s outputs depend on, besides its head and decode options."""
    processor = model.processor
    image_processor = getattr(processor, "image_processor", None)
    return {
        "model_type": model.model_type,
        # A model whose weights live elsewhere (a reasoner on vLLM) names them itself.
        "backbone": model.weights_fingerprint()
        if hasattr(model, "weights_fingerprint")
        else module_fingerprint(model.hf_model),
        "hf_config": _public(model.hf_model.config.to_dict()),
        "chat_template": getattr(processor, "chat_template", None)
        or getattr(model.tokenizer, "chat_template", None),
        "vocab": len(model.tokenizer),
        "image_processor": image_processor.to_dict() if image_processor is not None else None,
        "video_processor": _video_settings(processor),
        "dtype": str(next(model.hf_model.parameters()).dtype),
    }


def _video_settings(processor) -> dict | None:
    """The video processor's settings (sampling, budget); None for processors without one."""
    video_processor = getattr(processor, "video_processor", None)
    settings = getattr(video_processor, "settings", None)
    return None if settings is None else dataclasses.asdict(settings)
