"""The tiny fixtures notice decode positions: shifting them by one, or dropping the M-RoPE deltas,
changes the greedy tokens on every model type. Without this the HF-equality tests (test_generate,
test_unified, test_heads) could pass with positions that are wrong (see tte_fast.testing)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

import tte_fast.runtime.static as static
from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.positions import prefill_position_ids
from tte_fast.runtime.static import StaticBatches
from tte_fast.testing import TINY_MODEL_TYPES

NEW_TOKENS = 6
real_decode_position_ids = static.decode_position_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def prompt_batch(model_type: str, processor) -> dict:
    """Three left-padded prompts of different lengths; on Qwen-VL two of them carry images."""
    texts = ["hello there", "a much longer prompt with several more words in it", "no image here"]
    if model_type == "qwen2":
        prompts = [
            processor.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
            )
            for t in texts
        ]
        return dict(processor(prompts, padding=True, padding_side="left", return_tensors="pt"))
    contents = [[{"type": "image"}] * (i < 2) + [{"type": "text", "text": t}] for i, t in enumerate(texts)]
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": c}], add_generation_prompt=True, tokenize=False
        )
        for c in contents
    ]
    images = [random_image(0, 60, 90), random_image(1, 120, 44)]
    return dict(
        processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt")
    )


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def decoded(request, tiny_checkpoints):
    """(model type, HF model, prompt batch, greedy tokens per row at the right positions)."""
    model_type = request.param
    path = tiny_checkpoints[model_type]
    auto = AutoModelForCausalLM if model_type == "qwen2" else AutoModelForImageTextToText
    model = auto.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    batch = prompt_batch(model_type, load_processor(path, model_type))
    return model_type, model, batch, greedy(model, batch)


def greedy(model, batch) -> list[list[int]]:
    out = StaticBatches.of(model).decode(batch, DecodeOptions(max_think_tokens=NEW_TOKENS))
    return [tokens.tolist() for tokens in out.generated]


def test_decode_positions_off_by_one_change_every_row(decoded, monkeypatch):
    _, model, batch, expected = decoded
    monkeypatch.setattr(
        static, "decode_position_ids", lambda pos, deltas: real_decode_position_ids(pos + 1, deltas)
    )
    shifted = greedy(model, batch)
    for row, tokens in enumerate(shifted):
        assert tokens[0] == expected[row][0]  # the prefill's token: positions there are untouched
        assert tokens[1:] != expected[row][1:], f"row {row} decodes the same tokens one position off"


@pytest.mark.parametrize("decoded", [t for t in TINY_MODEL_TYPES if t != "qwen2"], indirect=True)
def test_dropped_mrope_deltas_change_the_image_rows(decoded, monkeypatch):
    """An image shifts M-RoPE positions (its tokens span fewer positions than tokens): the rows with
    a non-zero delta must decode differently without it; the text-only row (delta 0) must not."""
    _, model, batch, expected = decoded
    _, deltas = prefill_position_ids(model, batch)
    moved = deltas.view(-1) != 0
    assert moved.any() and not moved[2]  # rows 0 and 1 carry images, row 2 is text only
    monkeypatch.setattr(
        static,
        "decode_position_ids",
        lambda pos, deltas: real_decode_position_ids(pos, torch.zeros_like(deltas)),
    )
    dropped = greedy(model, batch)
    for row, tokens in enumerate(dropped):
        if moved[row]:
            assert tokens[1:] != expected[row][1:], f"row {row} (delta {int(deltas[row])}) ignores its delta"
        else:
            assert tokens == expected[row]
