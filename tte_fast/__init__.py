"""tte_fast: a fast runtime for Think-Then-Embed (TTE) multimodal embeddings.

Public names are imported lazily so ``import tte_fast`` stays cheap (no transformers import).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "UnifiedTTE": "tte_fast.model",
    "EncodeResult": "tte_fast.model",
    "TwoModelTTE": "tte_fast.two_model",
    "EncodeParams": "tte_fast.settings.params",
    "load_tte": "tte_fast.checkpoint.load",
    "InputError": "tte_fast.inputs",
    "TTEUHead": "tte_fast.heads",
    "ImageProcessor": "tte_fast.preprocess",
    "VideoProcessor": "tte_fast.video_preprocess",
    "gradcache_step": "tte_fast.gradcache",
    "pool_normalize": "tte_fast.kernels",
    "infonce_loss": "tte_fast.kernels",
    "infonce_loss_and_grads": "tte_fast.kernels",
    "last_token_index": "tte_fast.kernels",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tte_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
