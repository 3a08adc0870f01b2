"""TwoModelTTE (TTE_t / TTE_s): the reasoner's traces, embedded by a separate embedder, equal a
from-scratch HF forward of the embedder over the returned sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tte_fast.model import UnifiedTTE
from tte_fast.two_model import TwoModelTTE

ATOL = 1e-4  # fp32
THINK = 6
PAIRS = {"vl": ("qwen3_vl", "qwen2_vl"), "text": ("qwen2", "qwen2")}


@pytest.fixture(scope="module")
def pipelines(tiny_checkpoints):
    """pair name -> (TwoModelTTE, embedder checkpoint path), loaded once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            reasoner_type, embedder_type = PAIRS[name]
            reasoner = UnifiedTTE.from_pretrained(tiny_checkpoints[reasoner_type], device="cpu")
            embedder = UnifiedTTE.from_pretrained(tiny_checkpoints[embedder_type], device="cpu")
            cache[name] = (TwoModelTTE(reasoner, embedder), tiny_checkpoints[embedder_type])
        return cache[name]

    return get


def make_inputs(name, seed=0):
    rng = np.random.default_rng(seed)
    if name == "text":
        return ["a cat on a mat", {"text": "a dog running", "instruction": "Find a matching caption."}, "red"]
    return [
        {"image": rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), "text": "a cat"},
        {"text": "a dog running across a field", "instruction": "Find the picture."},
        {"image": rng.integers(0, 256, (120, 50, 3), dtype=np.uint8)},
    ]


def reencode(embedder: UnifiedTTE, path: str, inputs: list, sequences: list[torch.Tensor]) -> torch.Tensor:
    """HF forward of the embedder over each sequence alone (no padding, HF's own positions): the
    final-norm hidden state of the last token, L2-normalised."""
    from transformers import Qwen2VLImageProcessorPil

    model = embedder.hf_model
    rows = []
    for raw, seq in zip(inputs, sequences):
        kwargs = {}
        if isinstance(raw, dict) and raw.get("image") is not None:
            pixels = Qwen2VLImageProcessorPil.from_pretrained(path)(
                images=[Image.fromarray(raw["image"])], return_tensors="pt"
            )
            kwargs = {
                "pixel_values": pixels["pixel_values"],
                "image_grid_thw": pixels["image_grid_thw"],
                "mm_token_type_ids": (seq == model.config.image_token_id).int()[None],
            }
        elif embedder.vision:
            kwargs = {"mm_token_type_ids": torch.zeros(1, len(seq), dtype=torch.int)}
        with torch.no_grad():
            out = model(input_ids=seq[None], output_hidden_states=True, **kwargs)
        rows.append(F.normalize(out.hidden_states[-1][0, -1].float(), dim=-1))
    return torch.stack(rows)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_embeddings_are_the_embedders_encoding_of_the_reasoners_traces(pipelines, name):
    two, path = pipelines(name)
    inputs = make_inputs(name)
    result = two.encode(inputs, think=True, max_think_tokens=THINK, batch_size=2)

    assert result.traces == two.reasoner.think(inputs, max_think_tokens=THINK)
    assert all(t.startswith(two.reasoner.config.prompts.think_prefix) for t in result.traces)
    assert result.embeddings.dtype == torch.float32
    assert result.embeddings.shape == (
        len(inputs),
        two.embedder.hf_model.config.get_text_config().hidden_size,
    )
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(len(inputs)), atol=1e-5, rtol=0)
    for seq, trace in zip(result.sequences, result.traces):
        assert int(seq[-1]) == two.embedder.embed_token_id
        assert trace in two.embedder.tokenizer.decode(seq.tolist())
    expected = reencode(two.embedder, path, inputs, result.sequences)
    torch.testing.assert_close(result.embeddings, expected, atol=ATOL, rtol=0)


def test_without_thinking_and_with_given_traces_the_reasoner_is_not_used(pipelines, monkeypatch):
    two, _ = pipelines("vl")
    inputs = make_inputs("vl", seed=1)
    traces = ["<think>\nstripes</think> a zebra", "<think>\nfur</think> a dog", "<think>\n</think> noise"]

    def no_thinking(*args, **kwargs):
        raise AssertionError("the reasoner must not run")

    monkeypatch.setattr(two.reasoner.batches, "decode", no_thinking)
    plain = two.encode(inputs, think=False)
    assert plain.traces is None
    torch.testing.assert_close(
        plain.embeddings, two.embedder.encode(inputs, think=False).embeddings, atol=0, rtol=0
    )
    given = two.encode(inputs, traces=traces)
    assert given.traces == traces
    expected = two.embedder.encode(inputs, traces=traces)
    torch.testing.assert_close(given.embeddings, expected.embeddings, atol=0, rtol=0)
    # The target side does not think by default.
    assert two.encode(inputs[1:2], side="target").traces is None


def test_bad_input_is_skipped_and_named(pipelines):
    two, _ = pipelines("vl")
    good = make_inputs("vl", seed=2)
    too_long = "x " * 5000  # past the reasoner's context: the reasoner's own message is kept
    inputs = [good[0], {"image": b"not an image", "text": "x"}, good[1], too_long, good[2]]
    result = two.encode(inputs, max_think_tokens=THINK, on_error="skip")
    assert list(result.errors) == [1, 3]
    assert result.errors[1].startswith("input 1: cannot read image")
    assert result.errors[3].startswith("input 3: prompt of") and "exceeds" in result.errors[3]
    for bad in (1, 3):
        assert result.traces[bad] is None and result.sequences[bad] is None
        assert torch.count_nonzero(result.embeddings[bad]) == 0
    alone = two.encode(good, max_think_tokens=THINK)
    torch.testing.assert_close(result.embeddings[[0, 2, 4]], alone.embeddings, atol=ATOL, rtol=0)
    assert [result.traces[i] for i in (0, 2, 4)] == alone.traces
    with pytest.raises(ValueError, match="input 1"):
        two.encode(inputs, max_think_tokens=THINK)


def test_bad_arguments(pipelines):
    two, _ = pipelines("text")
    with pytest.raises(ValueError, match="either think=True or traces"):
        two.encode(["a"], think=True, traces=["<think>\n</think> a"])
    with pytest.raises(TypeError, match="tempreature"):
        two.encode(["a"], tempreature=0.5)
    with pytest.raises(TypeError, match="embedder must be a UnifiedTTE"):
        TwoModelTTE(two.reasoner, "not a model")


def test_save_and_load_round_trip(pipelines, tmp_path, tiny_checkpoints):
    two, _ = pipelines("text")
    inputs = make_inputs("text", seed=3)
    before = two.encode(inputs, max_think_tokens=THINK)
    two.save_pretrained(str(tmp_path))
    reloaded = TwoModelTTE.from_pretrained(str(tmp_path), device="cpu")
    after = reloaded.encode(inputs, max_think_tokens=THINK)
    assert after.traces == before.traces
    torch.testing.assert_close(after.embeddings, before.embeddings, atol=0, rtol=0)
    by_path = TwoModelTTE.from_pretrained(tiny_checkpoints["qwen2"], tiny_checkpoints["qwen2"], device="cpu")
    torch.testing.assert_close(
        by_path.encode(inputs, max_think_tokens=THINK).embeddings, before.embeddings, atol=0, rtol=0
    )
