"""The model types the runtime loads, and the transformers classes that serve each."""

from __future__ import annotations

QWEN_VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def is_qwen_vl(model_type: str) -> bool:
    return model_type in QWEN_VL_MODEL_TYPES


def auto_model_class(model_type: str) -> type:
    """The transformers auto class that builds or loads ``model_type``: image-text-to-text for
    Qwen-VL, causal LM for the rest."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_qwen_vl(model_type) else AutoModelForCausalLM


def processor_class(model_type: str) -> type:
    """The transformers processor class of a Qwen-VL ``model_type``."""
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLProcessor as processor
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as processor
    elif model_type == "qwen3_vl":
        from transformers import Qwen3VLProcessor as processor
    else:
        raise ValueError(f"unknown Qwen-VL model type {model_type!r}; expected one of {QWEN_VL_MODEL_TYPES}")
    return processor
