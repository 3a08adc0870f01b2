"""A reasoner's prompts and decode options without its weights, for backends that run the weights
themselves (vLLM, Ray Data): a ``UnifiedTTE`` over the checkpoint's architecture on the ``meta``
device, so prompts, stop tokens, budgets and trace decoding come from the very code ``think`` runs,
and a 72B teacher costs no memory here. Its fingerprint reads the checkpoint's files instead of
weights it does not hold."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct

# Files whose bytes shape a checkpoint's traces besides its weights.
SETTING_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "tte_config.json",
)


def weightless_model(path: str, recipe: str | None = None, cls=None, dtype=None):
    """The ``UnifiedTTE`` (or subclass ``cls``) of checkpoint ``path`` with meta-device weights
    (prompts and decoding only) in ``dtype`` (default: the checkpoint's, as vLLM's ``auto``), which
    the eval's fingerprints record."""
    import torch
    from transformers import AutoConfig, GenerationConfig

    from tte_fast.checkpoint.hf_processor import load_processor
    from tte_fast.checkpoint.loading import processor_source, resolve_dtype
    from tte_fast.checkpoint.model_types import auto_model_class
    from tte_fast.checkpoint.recipes import get_recipe
    from tte_fast.checkpoint.tte_config import TTEConfig
    from tte_fast.model import UnifiedTTE

    hf_config = AutoConfig.from_pretrained(path)
    saved = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    chosen = resolve_dtype(dtype)
    chosen = chosen if isinstance(chosen, torch.dtype) else resolve_dtype(saved or "float32")
    with torch.device("meta"):
        hf_model = auto_model_class(hf_config.model_type).from_config(hf_config, dtype=chosen)
    with contextlib.suppress(OSError):  # no generation_config.json: keep the one from_config made
        hf_model.generation_config = GenerationConfig.from_pretrained(path)
    config = TTEConfig.load(path) or TTEConfig()
    if recipe is not None:
        config = get_recipe(recipe).apply(config)
    processor = load_processor(
        processor_source(path),
        hf_config.model_type,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
    )
    model = (cls or UnifiedTTE)(hf_model, processor, hf_config.model_type, config)
    # The eval's fingerprints read this instead of weights it does not hold (unified_parts).
    model.weights_fingerprint = lambda: external_weights_fingerprint(path)
    return model


def external_weights_fingerprint(path: str) -> str:
    """How the eval's caches name weights that another engine holds: by the checkpoint's files, so
    a trace job on vLLM and an eval thinking on vLLM meet in one trace cache."""
    return "external:" + checkpoint_fingerprint(path)


def checkpoint_fingerprint(path: str) -> str:
    """A digest of a checkpoint folder: its setting files' bytes and, per safetensors file, its
    header (tensor names, dtypes, shapes, offsets) and size; a hub id is taken by name."""
    h = hashlib.blake2b(digest_size=20)
    if not os.path.isdir(path):
        h.update(f"id:{path}".encode())
        return h.hexdigest()
    for name in SETTING_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file, "rb") as f:
                h.update(name.encode() + hashlib.blake2b(f.read(), digest_size=20).digest())
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            file = os.path.join(path, name)
            with open(file, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            h.update(f"{name}|{os.path.getsize(file)}|{json.dumps(header, sort_keys=True)}".encode())
    return h.hexdigest()
