"""Training records with videos: paths resolve against the records' folder, frames are read when the
step's batch is built (errors name the record), and the batch carries the video's patches and tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.prompting.prompts import PromptConfig
from tte_fast.train.batches import Renderer, StepBatches
from tte_fast.train.records import DataError, read_dataset
from tte_fast.train.schedule import build_schedule


@pytest.fixture(scope="module")
def renderer(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], "qwen2_vl")
    return Renderer(
        processor, True, PromptConfig(), processor.tokenizer.get_vocab()["<|im_end|>"], "</think>"
    )


def write_frames(folder, count: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(count)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{k}.png")


def step_batch(tmp_path, renderer, rows, bad_data="fail") -> dict:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_dataset(str(path), "jsonl", "embedder")
    schedule = build_schedule([len(records)], [1.0], len(records), 1, 0)
    return StepBatches("embedder", [records], schedule, 0, len(records), renderer, bad_data, 0, None)[0]


def test_video_records_batch_as_encode_does(tmp_path, renderer):
    write_frames(tmp_path / "clip", 4)
    rows = [
        {"query": {"video": "clip", "text": "what happens"}, "pos": "a cat jumps"},
        {"query": "q", "pos": "p"},
    ]
    batch = step_batch(tmp_path, renderer, rows)
    queries = batch["queries"]
    assert queries["video_grid_thw"].tolist() == [[2, 4, 6]]  # 4 frames of 30x40 -> 56x84
    video_processor = renderer.processor.video_processor
    clip = video_processor.load(0, str(tmp_path / "clip"))  # the path, resolved against the records
    assert torch.equal(queries["pixel_values_videos"], video_processor([clip.frames])["pixel_values_videos"])
    video_tokens = (queries["input_ids"] == renderer.processor.video_token_id).sum(-1)
    assert sorted(video_tokens.tolist()) == [0, 2 * 4 * 6 // 4]


def test_bad_videos_name_the_record(tmp_path, renderer):
    (tmp_path / "empty").mkdir()
    rows = [{"query": "fine", "pos": "fine"}, {"query": {"video": "empty"}, "pos": "x"}]
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: query: video folder .*empty.* has no frame images"):
        step_batch(tmp_path, renderer, rows)
    batch = step_batch(tmp_path, renderer, rows, bad_data="skip")
    assert batch["samples"] == 1 and "pairs.jsonl:2" in batch["skipped"][0]
    rows[1] = {"query": {"video": "nowhere"}, "pos": "x"}
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: query: video not found: '.*nowhere'"):
        step_batch(tmp_path, renderer, rows)
