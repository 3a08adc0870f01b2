"""Where prompts that do not think are embedded (tte_fast.prompting.batching.prompt_batch): the
embedding token appended, the prompt's own last token, or cut after the last prompt token."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from tte_fast.inputs import EmbedInput
from tte_fast.prompting.batching import cut_after_last, prompt_batch, unpadded
from tte_fast.prompting.prompts import PromptConfig
from tte_fast.runtime.positions import SEQUENTIAL_POSITIONS

MARK = "<|object_ref_start|>"  # a token of the Qwen vocabulary the prompts carry twice


def items(seed: int) -> list[EmbedInput]:
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    return [
        EmbedInput(text=f"a {MARK} cat"),
        EmbedInput(text="a dog that runs far " * int(rng.integers(1, 4)), image=image),
        EmbedInput(text=f"{MARK} short"),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_prompts_end_where_they_are_embedded(vl_model, seed):
    processor, tokenizer = vl_model.processor, vl_model.tokenizer
    mark = tokenizer.convert_tokens_to_ids(MARK)
    template = PromptConfig(user_template="{input}\n" + MARK + "\nmore text after the mark")
    batch = [items(seed), ["query"] * 3, False, template, True]
    full = unpadded(prompt_batch(processor, *batch, prompt_embed="last"))
    appended = unpadded(prompt_batch(processor, *batch, embed_token_id=vl_model.embed_token_id))
    cut = prompt_batch(processor, *batch, prompt_embed="token", prompt_embed_token_id=mark)
    for row, ids in enumerate(full):
        last = max(i for i, t in enumerate(ids.tolist()) if t == mark)  # the template's mark, not the text's
        assert unpadded(cut)[row].tolist() == ids[: last + 1].tolist()
        assert appended[row].tolist() == ids.tolist() + [vl_model.embed_token_id]
    assert bool((cut["attention_mask"][:, -1] == 1).all())  # left-padded again
    # The image's tokens and token types survive the cut.
    image_token = processor.image_token_id
    assert int((cut["input_ids"] == image_token).sum()) == int(cut["image_grid_thw"].prod(-1).sum() // 4)
    if "mm_token_type_ids" in cut:
        assert torch.equal(cut["mm_token_type_ids"].bool(), cut["input_ids"] == image_token)
    given = prompt_batch(processor, *batch, traces=["t"] * 3, embed_token_id=7, prompt_embed="last")
    assert all(ids[-1] == 7 for ids in unpadded(given))  # a trace is always closed by the embedding token
    sequential = prompt_batch(processor, *batch, prompt_embed="last", sequential_positions=True)
    assert sequential[SEQUENTIAL_POSITIONS] is True


def test_a_prompt_without_its_embedding_token_is_an_error():
    batch = {
        "input_ids": torch.tensor([[0, 5, 6], [5, 3, 4]]),
        "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
    }
    assert unpadded(cut_after_last(batch, 5))[1].tolist() == [5]
    with pytest.raises(ValueError, match="row 0"):
        cut_after_last({**batch, "input_ids": torch.tensor([[0, 1, 6], [5, 3, 4]])}, 5)
    with pytest.raises(ValueError, match="image tokens after"):
        cut_after_last(batch, 5, image_token_id=6)
