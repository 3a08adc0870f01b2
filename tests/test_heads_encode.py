"""The TTE_u head inside UnifiedTTE.encode: embeddings read from the states captured while thinking
(or from a prefill that skips the backbone's last k layers) equal the head over a fresh forward."""

from __future__ import annotations

import pytest
import torch
from helpers import StopFirstRow, random_pixels

from tte_fast.heads import find_decoder
from tte_fast.inputs import load_image
from tte_fast.model import UnifiedTTE

ATOL = 1e-4  # fp32

pytestmark = pytest.mark.usefixtures("one_thread")


def _head_reference(model: UnifiedTTE, sequence: torch.Tensor, image) -> torch.Tensor:
    """The head over a fresh, unpadded forward's layer L-k states of one sequence."""
    ids = sequence[None]
    kwargs = {}
    if model.vision:
        kwargs["mm_token_type_ids"] = (ids == model.hf_model.config.image_token_id).int()
        if image is not None:
            pixels = model.processor.image_processor(images=[load_image(0, image)], return_tensors="pt")
            kwargs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    with torch.inference_mode(), model.head.capture(model.hf_model) as captured:
        model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        return model.head.embed(captured, torch.ones_like(ids))[0].float()


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2"])
def test_tte_u_head_over_captured_states_equals_fresh_forward(
    tiny_checkpoints, model_type, tmp_path, monkeypatch
):
    model = UnifiedTTE.from_pretrained(
        tiny_checkpoints[model_type], device="cpu", head="tte_u", head_layers=2
    )
    image = random_pixels(0, 40, 90)
    inputs = ["tte_u query", "a longer text query for the unified head"]
    if model.vision:
        inputs.append({"image": image, "text": "with an image"})
    # Thinking, thinking with one row stopped early on EOS, and one prefill without thinking.
    lengths = {}
    for think, stop_early in ((True, False), (True, True), (False, False)):
        if stop_early:
            forced = StopFirstRow(model.runner.lm_head, model.eos_token_ids[0], at=1)
            monkeypatch.setattr(model.runner, "lm_head", forced)
        result = model.encode(inputs, think=think, max_think_tokens=4, batch_size=3)
        monkeypatch.undo()
        lengths[(think, stop_early)] = [len(seq) for seq in result.sequences]
        if stop_early:
            shorter = zip(lengths[(think, True)], lengths[(think, False)])
            assert sum(a < b for a, b in shorter) == 1
        for i, item in enumerate(inputs):
            img = item.get("image") if isinstance(item, dict) else None
            expected = _head_reference(model, result.sequences[i], img)
            torch.testing.assert_close(result.embeddings[i], expected, atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))
    reloaded = UnifiedTTE.from_pretrained(str(tmp_path), device="cpu")
    assert reloaded.config.head == "tte_u" and reloaded.head is not None
    torch.testing.assert_close(
        reloaded.encode(inputs, think=False).embeddings, model.encode(inputs, think=False).embeddings
    )


def test_tte_u_prefill_skips_the_backbones_last_k_layers(tiny_checkpoints):
    """Without thinking the TTE_u head replaces the backbone's last k layers: they never run."""
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu", head="tte_u", head_layers=2)
    decoder = find_decoder(model.hf_model)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in (decoder.layers[-2], decoder.norm)]
    try:
        result = model.encode(["a query", "a longer query about cats"], think=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert not calls
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
