"""Batches with videos split into chunks (GradCache) as if each sample were processed alone:
its patches, grids and Qwen2.5-VL's seconds per temporal patch follow it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.inputs import EmbedInput
from tte_fast.prompting.batching import prompt_batch, unpadded
from tte_fast.prompting.chunking import split_inputs
from tte_fast.prompting.prompts import PromptConfig


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_video_batch_splits_like_each_sample_alone(tiny_checkpoints, model_type):
    processor = load_processor(tiny_checkpoints[model_type], model_type)
    rng = np.random.default_rng(0)

    def video(count, height, width):
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]

    items = [
        EmbedInput(text="first", video=video(4, 40, 60)),
        EmbedInput(text="no video"),
        EmbedInput(text="third", video=video(6, 70, 30)),
    ]

    def batch_of(part):
        return prompt_batch(processor, part, ["query"] * len(part), False, PromptConfig(), True, None, 151643)

    batch = batch_of(items)
    keys = [k for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts") if k in batch]
    assert (model_type == "qwen2_5_vl") == ("second_per_grid_ts" in keys)
    for chunk, item in zip(split_inputs(batch, 1), items):
        alone = batch_of([item])
        for key in keys:
            if alone.get(key) is None:
                assert chunk[key] is None, key
            else:
                torch.testing.assert_close(chunk[key], alone[key], rtol=0, atol=0)
        assert torch.equal(unpadded(chunk)[0], unpadded(alone)[0])
