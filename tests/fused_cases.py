"""Small models of every type the fused decoder supports, shared by its step and prefill tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, Qwen3Config

from tte_fast.checkpoint.model_types import auto_model_class
from tte_fast.testing import tiny_config

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}
SMALL_TEXT = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def make_model(model_type: str, dtype=torch.float32):
    torch.manual_seed(0)
    if model_type == "llama":
        config = LlamaConfig(**SMALL_TEXT, rope_theta=10000.0)
    elif model_type == "qwen3":
        config = Qwen3Config(**SMALL_TEXT, head_dim=16)
    else:
        config = tiny_config(model_type)
    model = auto_model_class(config.model_type).from_config(config, dtype=dtype).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so that dropping one shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.3)
    return model
