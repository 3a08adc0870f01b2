"""The minibench tokenizer and base checkpoint: exact round trips, no unknown words, the runtime's
special tokens, and a saved Qwen3-VL that UnifiedTTE loads, encodes and thinks with."""

from __future__ import annotations

import os
import random

import pytest
import torch

from tte_fast.minibench.base import PROMPTS, build_base
from tte_fast.minibench.tasks import TASKS, make_examples
from tte_fast.minibench.tokenizer import SPECIAL, THINK_TOKENS, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(PROMPTS)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(str(tmp_path_factory.mktemp("minibench_base")), seed=0)


def test_small_vocabulary_with_the_runtime_tokens(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(vocab) < 400
    for token in SPECIAL + THINK_TOKENS:
        assert token in vocab
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # think tags are plain tokens: decoding traces with skip_special_tokens keeps them
    ids = tokenizer("<think>\nred\n</think>\n\nred<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nred\n</think>\n\nred"


def test_every_benchmark_text_round_trips_without_unknown_words(tokenizer):
    for task in TASKS:  # other seeds than the vocabulary was built from
        for ex in make_examples(task, 100, random.Random(f"held-out/{task}")):
            for text in [ex.text, ex.trace] + [c.text for c in ex.candidates if c.text]:
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids, text
                assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id in tokenizer("zebra", add_special_tokens=False)["input_ids"]


def test_saved_checkpoint_is_small_and_loads_with_a_qwen_vl_processor(base):
    from tte_fast.checkpoint.hf_processor import load_processor, renders_images

    assert os.path.getsize(os.path.join(base, "model.safetensors")) < 20e6
    processor = load_processor(base, "qwen3_vl")
    assert renders_images(processor)


def test_unified_tte_encodes_and_thinks(base):
    from tte_fast import UnifiedTTE
    from tte_fast.minibench.scenes import render_scene

    model = UnifiedTTE.from_pretrained(base, device="cpu", dtype=torch.float32)
    assert model.embed_token == "<emb>"
    ex = make_examples("SceneQA", 1, random.Random(1))[0]
    image = render_scene(ex.scene)
    inputs = [{"image": image, "text": ex.text, "instruction": TASKS["SceneQA"][1]}, "red"]
    result = model.encode(inputs, think=True, max_think_tokens=6)
    assert result.embeddings.shape == (2, 128)
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(2))
    assert all(t.startswith("<think>\n") for t in result.traces)
    # a teacher trace is embedded after the same prompt, word for word, then the embedding token
    given = model.encode(inputs[:1], traces=[ex.trace])
    tail = given.sequences[0].tolist()
    assert tail[-1] == model.embed_token_id
    assert model.tokenizer.decode(tail[:-1]).endswith("<|im_start|>assistant\n" + ex.trace)
    assert given.embeddings.shape == (1, 128)


def test_text_queries_and_traces_use_only_known_words(tokenizer):
    from tte_fast.minibench.base import MAX_THINK_TOKENS
    from tte_fast.minibench.scenes import LETTERS

    vocab = tokenizer.get_vocab()
    for letter in LETTERS:
        assert "Ġ" + letter in vocab
    seen = 0
    for task in TASKS:
        for ex in make_examples(task, 200, random.Random(f"held-out-text/{task}")):
            body = ex.trace.removeprefix("<think>\n")
            ids = tokenizer(body, add_special_tokens=False)["input_ids"]
            assert len(ids) <= MAX_THINK_TOKENS, ex.trace  # the whole trace fits the think budget
            if "letter" not in ex.text:
                continue
            seen += 1
            for text in (ex.text, ex.trace):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids, text
                assert tokenizer.decode(ids) == text
    assert seen >= 100
