"""Loading a backbone: dtype and device names, the attention implementation, the embedding head."""

from __future__ import annotations

import os

import torch

from tte_fast.checkpoint.adapters import adapter_base, checkpoint_file, merge_adapter
from tte_fast.checkpoint.model_types import QWEN_VL_MODEL_TYPES, auto_model_class, is_qwen_vl
from tte_fast.checkpoint.tte_config import TTEConfig


def build_head(config: TTEConfig, path_or_id: str, hf_model):
    """None for the last-token head; the TTE_u head (saved one if the checkpoint has it) otherwise."""
    if config.head == "last_token":
        return None
    from tte_fast.heads import HEAD_WEIGHTS_NAME, TTEUHead

    if os.path.isdir(path_or_id) and os.path.isfile(os.path.join(path_or_id, HEAD_WEIGHTS_NAME)):
        head = TTEUHead.from_pretrained(path_or_id, hf_model)
        if head.num_layers != config.head_layers:
            raise ValueError(
                f"the saved TTE_u head has {head.num_layers} layers; head_layers={config.head_layers}"
            )
    else:
        head = TTEUHead.from_backbone(hf_model, num_layers=config.head_layers)
    param = next(hf_model.parameters())
    return head.to(device=param.device, dtype=param.dtype).eval()


def resolve_dtype(dtype):
    """None keeps the checkpoint's dtype; a torch.dtype or its name (``"bfloat16"``, ``"bf16"``) picks one."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype if dtype is not None else "auto"
    names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    if isinstance(dtype, str):
        if dtype == "auto":
            return dtype
        value = getattr(torch, names.get(dtype, dtype), None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    raise ValueError(f"unknown dtype {dtype!r}; use a torch floating dtype or its name, e.g. 'bfloat16'")


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_attention(device: torch.device, dtype, head: str, compile) -> str:
    """flash-attn 2 when it is installed and usable (CUDA, half precision, last-token head, no
    compiled step: it decodes on a growing cache); SDPA otherwise."""
    import importlib.util

    half = dtype in (torch.float16, torch.bfloat16)
    usable = device.type == "cuda" and half and head == "last_token" and not compile
    if usable and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_backbone(path_or_id: str, dtype, device: torch.device, attn_implementation: str, base_model=None):
    """The HF model (Qwen-VL, or any text-only causal LM) and its model type; unsupported types fail
    early. A PEFT adapter checkpoint loads its base (``base_model``, default: the one its
    ``adapter_config.json`` names) with the adapter merged."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    adapter = path_or_id if (base_model or adapter_base(path_or_id)) else None
    path_or_id = base_model or adapter_base(path_or_id) or path_or_id
    try:
        hf_config = AutoConfig.from_pretrained(path_or_id)
    except (ValueError, KeyError) as e:
        raise ValueError(f"cannot load {path_or_id!r}: {e}") from e
    model_type = hf_config.model_type
    text_only = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and getattr(hf_config, "vision_config", None) is None
    )
    if not (is_qwen_vl(model_type) or text_only):
        raise ValueError(
            f"unsupported model type {model_type!r} in {path_or_id!r}: expected one of {QWEN_VL_MODEL_TYPES} "
            "or a text-only causal LM"
        )
    auto = auto_model_class(model_type)
    hf_model = auto.from_pretrained(path_or_id, dtype=dtype, attn_implementation=attn_implementation)
    if adapter is not None:
        hf_model = merge_adapter(hf_model, adapter)
    return hf_model.to(device).eval(), model_type


def processor_source(path_or_id: str, base_model: str | None = None) -> str:
    """Where a checkpoint's tokenizer and processor are: itself, or for an adapter that ships none,
    its base model."""
    base = base_model or adapter_base(path_or_id)
    if base is None or checkpoint_file(path_or_id, "tokenizer_config.json") is not None:
        return path_or_id
    return base
