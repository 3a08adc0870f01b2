"""The untrained starting point of every minibench model: a small Qwen3-VL with the benchmark's
tokenizer, image processor, chat template and runtime settings, saved as a checkpoint folder.

Qwen3-VL rather than Qwen2-VL, because its picture tokens say which cell they come from. Qwen2-VL's
vision tower has no absolute positions, and its M-RoPE gives the picture's column axis the lowest
rotary frequencies (at this head size, 0.003 rad per column and less): its decoder sees the four
cells' tokens as nearly interchangeable, and the small reasoner never learned to name the k-th
cell (docs/minibench.md, Perception). Qwen3-VL adds a learned absolute position embedding to the
patches and interleaves the M-RoPE axes over the whole frequency range. Its patches are 14 pixels
here (Qwen3-VL's own are 16), so that a cell is exactly 2 x 2 merged tokens, as before."""

from __future__ import annotations

import json
import os

import torch

from tte_fast.checkpoint.tte_config import TTEConfig
from tte_fast.minibench.scenes import CELL, CELLS
from tte_fast.prompting.prompts import PromptConfig

MODEL_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "model.json")
PROMPTS = PromptConfig(
    query_instruction="Represent the query for retrieving candidates.",
    target_instruction="Represent the candidate.",
    reasoning_instruction="Think it through step by step, then answer.",
)
MAX_THINK_TOKENS = 64
MAX_ANSWER_TOKENS = 6


def runtime_config(head_layers: int = 2) -> TTEConfig:
    return TTEConfig(
        head_layers=head_layers,
        max_think_tokens=MAX_THINK_TOKENS,
        max_answer_tokens=MAX_ANSWER_TOKENS,
        prompts=PromptConfig(**PROMPTS.to_dict()),
    )


def model_config(tokenizer, overrides: dict | None = None):
    """The shipped Qwen3-VL config (``overrides`` update its text_config), its vocabulary and special
    token ids set from ``tokenizer``."""
    from transformers import AutoConfig

    with open(MODEL_CONFIG, encoding="utf-8") as f:
        raw = json.load(f)
    raw["text_config"].update(overrides or {})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    raw["text_config"].update(
        vocab_size=max(tokenizer.get_vocab().values()) + 1,  # the trained ids may leave gaps
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    for key, token in {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }.items():
        raw[key] = tokenizer.convert_tokens_to_ids(token)
    return AutoConfig.for_model(**raw)


def image_processor(config):
    from transformers import Qwen2VLImageProcessorPil

    vision = config.vision_config
    return Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        min_pixels=CELL * CELL,
        max_pixels=CELL * CELL * CELLS,
    )


def build_base(path: str, seed: int = 0, text_overrides: dict | None = None, head_layers: int = 2) -> str:
    """Save the untrained base checkpoint at ``path`` (same seed, same weights)."""
    from transformers import AutoModelForImageTextToText

    from tte_fast.checkpoint.hf_processor import CHAT_TEMPLATE_FILE, packaged_chat_template
    from tte_fast.minibench.tokenizer import build_tokenizer
    from tte_fast.testing import sharpen_text_decoder

    tokenizer = build_tokenizer(PROMPTS)
    config = model_config(tokenizer, text_overrides)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    # At the init std of 0.02 attention is near uniform and every last-token state nearly the same:
    # contrastive training from scratch then starts from collapsed embeddings and barely moves.
    sharpen_text_decoder(model)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor(config).save_pretrained(path)
    with open(os.path.join(path, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
        f.write(packaged_chat_template())
    runtime_config(head_layers).save(path)
    return path
