"""The batched decoder against HF ``generate`` on every tiny fixture."""

from __future__ import annotations

import pytest
import torch
from helpers import random_image
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.static import StaticBatches
from tte_fast.testing import TINY_MODEL_TYPES

NEW_TOKENS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def loaded(request, tiny_checkpoints):
    """(model type, HF model, left-padded prompt batch): images of different sizes and a text-only row."""
    model_type = request.param
    path = tiny_checkpoints[model_type]
    processor = load_processor(path, model_type)
    if model_type == "qwen2":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        prompts = ["hello there", "a much longer prompt with several more words in it", "mid length"]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        batch = processor(
            texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
        )
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        )

        def turn(text, image):
            content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
            return [{"role": "user", "content": content}]

        messages = [
            turn("hello", True),
            turn("a longer prompt with words", True),
            turn("no image here", False),
        ]
        texts = [
            processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages
        ]
        images = [random_image(0, 60, 90), random_image(1, 120, 44)]
        batch = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    batch = dict(batch)
    model.eval()
    return model_type, model, batch, _hf_tokens(model, batch, max_new_tokens=NEW_TOKENS)


def _hf_tokens(model, batch, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


def test_greedy_equals_hf_generate(loaded):
    _, model, batch, expected = loaded
    out = StaticBatches.of(model).decode(batch, DecodeOptions(max_think_tokens=NEW_TOKENS))
    for row, tokens in enumerate(out.generated):
        assert tokens.tolist() == expected[row].tolist()
    assert out.stop_reasons == ["think_budget"] * len(out.generated)
    # Without an embedding step the last sampled token is never fed.
    assert out.attention_mask.shape[1] == batch["input_ids"].shape[1] + NEW_TOKENS - 1


def test_growing_cache_path_equals_static(loaded):
    """The flash-attn path (growing cache and mask) gives the same tokens as the static one."""
    _, model, batch, _ = loaded
    options = DecodeOptions(max_think_tokens=5)
    static = StaticBatches.of(model).decode(batch, options, embed_token_id=151645)
    dynamic = StaticBatches.of(model, static_cache=False).decode(batch, options, embed_token_id=151645)
    assert [t.tolist() for t in static.generated] == [t.tolist() for t in dynamic.generated]
    torch.testing.assert_close(static.embed_hidden, dynamic.embed_hidden, atol=1e-5, rtol=1e-5)


def test_per_row_stop_equals_hf_generate(loaded):
    """A stop token that greedy decoding emits for row 0 only: that row stops, the others go on."""
    _, model, batch, free = loaded
    stop = next(
        (
            int(tok)
            for tok in free[0, 1:]
            if all(int(tok) not in free[r].tolist() for r in range(1, free.shape[0]))
        ),
        None,
    )
    if stop is None:
        pytest.skip("row 0 emits no token the other rows never emit")
    expected = _hf_tokens(model, batch, max_new_tokens=NEW_TOKENS, eos_token_id=stop, pad_token_id=0)
    options = DecodeOptions(max_think_tokens=NEW_TOKENS, eos_token_ids=(stop,))
    out = StaticBatches.of(model).decode(batch, options, embed_token_id=151645)
    stop_at = free[0].tolist().index(stop)
    assert out.generated[0].tolist() == expected[0, : stop_at + 1].tolist()
    assert out.kept[0].tolist() == expected[0, :stop_at].tolist()
    assert out.stop_reasons[0] == "eos"
    for row in range(1, len(out.generated)):
        assert out.generated[row].tolist() == free[row].tolist()
        assert out.stop_reasons[row] == "think_budget"
    # Row 0's mask: prompt, kept tokens, its embedding token, then nothing.
    prompt_len = batch["input_ids"].shape[1]
    row0 = out.attention_mask[0, prompt_len:]
    assert row0[: stop_at + 1].tolist() == [1] * (stop_at + 1)
    assert int(row0[stop_at + 1 :].sum()) == 0
    assert out.sequences[0][-1].item() == 151645
    assert len(out.sequences[0]) == int(out.attention_mask[0].sum())


@pytest.mark.parametrize("answer_tokens", [0, 2])
def test_answer_budget_after_think_end(loaded, answer_tokens):
    """Closing ``</think>`` switches a row to the answer budget: exactly ``answer_tokens`` follow it."""
    _, model, batch, free = loaded
    think_end = int(free[0, 1])  # pretend row 0's second token closes the thought
    closed_at = free[0].tolist().index(think_end)
    options = DecodeOptions(
        max_think_tokens=NEW_TOKENS, max_answer_tokens=answer_tokens, think_end_token_id=think_end
    )
    out = StaticBatches.of(model).decode(batch, options)
    assert out.generated[0].tolist() == free[0, : closed_at + 1 + answer_tokens].tolist()
    assert out.stop_reasons[0] == "answer_budget"


def test_sampling_top_k1_is_greedy_and_seeded(loaded):
    _, model, batch, free = loaded
    decoder = StaticBatches.of(model)
    top1 = decoder.decode(batch, DecodeOptions(max_think_tokens=4, do_sample=True, top_k=1, seed=3))
    assert [t.tolist() for t in top1.generated] == free[:, :4].tolist()
    hot = DecodeOptions(max_think_tokens=4, do_sample=True, temperature=5.0, top_p=0.9, seed=7)
    first, again = decoder.decode(batch, hot), decoder.decode(batch, hot)
    assert [t.tolist() for t in first.generated] == [t.tolist() for t in again.generated]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"max_think_tokens": 0}, "max_think_tokens"),
        ({"max_answer_tokens": -1}, "max_answer_tokens"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
    ],
)
def test_bad_options(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DecodeOptions(**kwargs)


def test_right_padding_is_rejected(tiny_checkpoints):
    path = tiny_checkpoints["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    batch = {
        "input_ids": torch.tensor([[1, 2, 3], [4, 5, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    with pytest.raises(ValueError, match="left-padded"):
        StaticBatches.of(model).decode(batch, DecodeOptions(max_think_tokens=2))


def test_compiled_step_equals_eager(tiny_checkpoints):
    """The shape-static decode step traces under torch.compile (eager backend: no C++ toolchain on CPU CI)."""
    path = tiny_checkpoints["qwen2"]
    processor = load_processor(path, "qwen2")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    texts = [
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nhello you<|im_end|>\n",
    ]
    batch = dict(processor(texts, padding=True, padding_side="left", return_tensors="pt"))
    options = DecodeOptions(max_think_tokens=4)
    eager = StaticBatches.of(model).decode(batch, options, embed_token_id=151645)
    torch._dynamo.reset()
    counters.clear()
    compiled = StaticBatches.of(model, compile="eager").decode(batch, options, embed_token_id=151645)
    # Every decode step (the embedding step included) reuses one graph: no recompiles per position.
    assert counters["stats"]["unique_graphs"] == 1
    assert [t.tolist() for t in compiled.generated] == [t.tolist() for t in eager.generated]
    torch.testing.assert_close(compiled.embed_hidden, eager.embed_hidden, atol=1e-5, rtol=1e-5)
