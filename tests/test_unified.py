"""UnifiedTTE: cache-path embeddings equal a from-scratch re-encode of ``.sequences`` on every fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import StopFirstRow

from tte_fast.inputs import load_image
from tte_fast.model import UnifiedTTE
from tte_fast.prompting.prompts import render_prompt
from tte_fast.testing import TINY_MODEL_TYPES

THINK = 5
ATOL = 1e-4  # fp32


pytestmark = pytest.mark.usefixtures("one_thread")


def sample_inputs(model_type: str) -> list:
    if model_type == "qwen2":
        return [
            "a short query",
            {"text": "a somewhat longer query about cats", "instruction": "Find it."},
            "mid",
        ]
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), "text": "what is shown"},
        "a text-only query about a red car",
        {"image": rng.integers(0, 256, (130, 40, 3), dtype=np.uint8), "instruction": "Find a caption."},
    ]


def reference_embedding(model: UnifiedTTE, sequence: torch.Tensor, image) -> torch.Tensor:
    """The HF model's own forward over one sequence, no padding, no cache: hidden_states[-1] at the end."""
    ids = sequence[None].to(model.device)
    kwargs = {}
    if model.vision:
        image_token = model.hf_model.config.image_token_id
        kwargs["mm_token_type_ids"] = (ids == image_token).int()
        if image is not None:
            pixels = model.processor.image_processor(images=[load_image(0, image)], return_tensors="pt")
            kwargs["pixel_values"] = pixels["pixel_values"].to(model.device)
            kwargs["image_grid_thw"] = pixels["image_grid_thw"].to(model.device)
    with torch.inference_mode():
        out = model.hf_model(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, **kwargs
        )
    return F.normalize(out.hidden_states[-1][0, -1].float(), dim=-1).cpu()


def _image_of(item):
    return item.get("image") if isinstance(item, dict) else None


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def setup(request, tiny_checkpoints):
    model_type = request.param
    model = UnifiedTTE.from_pretrained(tiny_checkpoints[model_type], device="cpu")
    inputs = sample_inputs(model_type)
    batched = model.encode(inputs, max_think_tokens=THINK, batch_size=3)
    return model_type, model, inputs, batched


def test_cache_embedding_equals_reencode(setup):
    _, model, inputs, result = setup
    assert result.embeddings.dtype == torch.float32
    assert result.embeddings.shape == (len(inputs), model.hf_model.config.get_text_config().hidden_size)
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(len(inputs)), atol=1e-5, rtol=0)
    for i, item in enumerate(inputs):
        assert result.sequences[i][-1].item() == model.embed_token_id
        assert result.traces[i].startswith(model.config.prompts.think_prefix)
        expected = reference_embedding(model, result.sequences[i], _image_of(item))
        torch.testing.assert_close(result.embeddings[i], expected, atol=ATOL, rtol=0)


def test_batch_equals_one_at_a_time(setup):
    _, model, inputs, batched = setup
    single = model.encode(inputs, max_think_tokens=THINK, batch_size=1)
    assert single.traces == batched.traces
    for a, b in zip(single.sequences, batched.sequences):
        assert a.tolist() == b.tolist()
    torch.testing.assert_close(single.embeddings, batched.embeddings, atol=ATOL, rtol=0)


def test_traces_equal_hf_generate(setup):
    """Each trace is the think prefix plus what HF ``generate`` writes for the same prompt."""
    model_type, model, inputs, batched = setup
    for i, raw in enumerate(inputs):
        item = model._check([raw], "raise")[0][0]
        text = render_prompt(model.processor, item, "query", True, model.config.prompts, model.vision)
        if model.vision:
            image = _image_of(raw)
            images = [load_image(0, image)] if image is not None else None
            batch = model.processor(text=[text], images=images, return_tensors="pt")
        else:
            batch = model.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.hf_model.generate(**batch, max_new_tokens=THINK, do_sample=False)
        new = out[0, batch["input_ids"].shape[1] :]
        assert batched.sequences[i].tolist() == batch["input_ids"][0].tolist() + new.tolist() + [
            model.embed_token_id
        ]
        expected = model.config.prompts.think_prefix + model.tokenizer.decode(new, skip_special_tokens=True)
        assert batched.traces[i] == expected


def test_plain_and_given_trace_embeddings_equal_reencode(setup):
    _, model, inputs, batched = setup
    plain = model.encode(inputs, think=False, batch_size=2)
    assert plain.traces is None
    given = model.encode(inputs, traces=batched.traces, batch_size=2)
    assert given.traces == batched.traces
    for i, item in enumerate(inputs):
        for result in (plain, given):
            assert result.sequences[i][-1].item() == model.embed_token_id
            expected = reference_embedding(model, result.sequences[i], _image_of(item))
            torch.testing.assert_close(result.embeddings[i], expected, atol=ATOL, rtol=0)
        assert len(given.sequences[i]) > len(plain.sequences[i])


def test_target_side_does_not_think_by_default(setup):
    _, model, inputs, batched = setup
    target = model.encode(inputs[:2], side="target")
    assert target.traces is None
    assert target.sequences[0].tolist() != batched.sequences[0].tolist()
    thinking_target = model.encode(inputs[:1], side="target", think=True, max_think_tokens=2)
    assert len(thinking_target.traces) == 1


def test_think_returns_traces_in_order(setup):
    _, model, inputs, batched = setup
    traces = model.think(inputs, max_think_tokens=THINK, batch_size=2)
    assert traces == batched.traces


def test_row_stopped_early_embeds_its_own_sequence(setup, monkeypatch):
    """One row stops on EOS while the others decode on: what the batch decodes after its stop never
    reaches its embedding, and its positions stay contiguous (it equals the re-encode)."""
    _, model, inputs, batched = setup
    forced = StopFirstRow(model.runner.lm_head, model.eos_token_ids[0], at=2)
    monkeypatch.setattr(model.runner, "lm_head", forced)
    result = model.encode(inputs, max_think_tokens=THINK, batch_size=3)
    shorter = [i for i in range(len(inputs)) if len(result.sequences[i]) < len(batched.sequences[i])]
    assert len(shorter) == 1
    row = shorter[0]
    assert len(result.sequences[row]) == len(batched.sequences[row]) - (THINK - 2)
    assert result.sequences[row][-1].item() == model.embed_token_id
    for i, item in enumerate(inputs):
        if i != row:
            assert result.sequences[i].tolist() == batched.sequences[i].tolist()
        expected = reference_embedding(model, result.sequences[i], _image_of(item))
        torch.testing.assert_close(result.embeddings[i], expected, atol=ATOL, rtol=0)
