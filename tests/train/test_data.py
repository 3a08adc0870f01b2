"""Training data: our JSONL records, the MMEB layout, the mixture schedule, workers and bad data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.train_cases import example
from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.prompting.prompts import PromptConfig
from tte_fast.settings.yaml_config import ConfigError
from tte_fast.train import load_run_config
from tte_fast.train.batches import Renderer, StepBatches
from tte_fast.train.records import DataError, read_dataset
from tte_fast.train.schedule import build_schedule


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def test_pair_records_resolve_images_against_the_file_folder():
    records = read_dataset(example("pairs.jsonl"), "jsonl", "embedder")
    assert len(records) == 4
    first, last = records[0], records[3]
    assert first.query["image"] == os.path.join(
        os.path.dirname(example("pairs.jsonl")), "images/red_square.png"
    )
    assert first.pos == {"text": "a red square on a white background", "image": None, "instruction": None}
    assert first.query_trace.startswith("<think>\n") and len(first.negs) == 1
    assert (
        last.pos["image"].endswith("yellow_star.png") and last.query["text"] == "which picture shows a star?"
    )
    assert first.source.endswith("pairs.jsonl:1")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_mmeb_layout_maps_the_image_placeholder(tmp_path, suffix):
    rows = [
        {
            "qry": "<|image_1|>\nRepresent the given image with the following question: why?",
            "qry_image_path": "a/x.jpg",
            "pos_text": "because",
            "pos_image_path": "",
            "neg_text": ["no", "<|image_1|> other"],
            "neg_image_path": ["", "b/y.jpg"],
        },
        {
            "qry": "find the picture of a cat",
            "qry_image_path": "",
            "pos_text": "<|image_1|>",
            "pos_image_path": "c/cat.jpg",
            "neg_text": "",
            "neg_image_path": "",
        },
    ]
    if suffix == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = str(tmp_path / "train.parquet")
        rows[1]["neg_text"], rows[1]["neg_image_path"] = [], []
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = _write(tmp_path / "train.jsonl", rows)
    first, second = read_dataset(path, "mmeb", "embedder", image_root="/images")
    assert first.query == {
        "text": "Represent the given image with the following question: why?",
        "image": "/images/a/x.jpg",
        "instruction": None,
    }
    assert first.pos["text"] == "because" and first.pos["image"] is None
    assert [n["text"] for n in first.negs] == ["no", "other"] and first.negs[1]["image"] == "/images/b/y.jpg"
    assert (
        second.pos == {"text": None, "image": "/images/c/cat.jpg", "instruction": None} and second.negs == []
    )


@pytest.mark.parametrize(
    "fmt,job,row,message",
    [
        ("jsonl", "embedder", "{not json", "not valid JSON"),
        ("jsonl", "embedder", {"query": "q", "pos": "p", "score": 1}, "unknown keys ['score']"),
        ("jsonl", "embedder", {"query": {"text": " "}, "pos": "p"}, "'query' is empty"),
        ("jsonl", "embedder", {}, "missing 'query'"),
        ("jsonl", "embedder", {"query": {"txt": "q"}, "pos": "p"}, "unknown keys in 'query' ['txt']"),
        (
            "jsonl",
            "reasoner",
            {"input": "q", "trace": "<think>t</think>", "answer": "a"},
            "without <think> tags",
        ),
        ("jsonl", "reasoner", {"input": "q", "trace": "t"}, "missing or empty 'answer'"),
        ("mmeb", "embedder", {"qry": "q", "pos_text": "p", "label": 3}, "unknown columns ['label']"),
        ("mmeb", "embedder", {"qry": "", "qry_image_path": "", "pos_text": "p"}, "empty record"),
        ("mmeb", "embedder", {"qry": "<|image_1|> q", "pos_text": "p"}, "no image path"),
    ],
)
def test_bad_records_name_the_file_and_line(tmp_path, fmt, job, row, message):
    good = {"input": "q", "trace": "t", "answer": "a"} if job == "reasoner" else {"query": "q", "pos": "p"}
    if fmt == "mmeb":
        good = {"qry": "q", "pos_text": "p"}
    path = _write(tmp_path / "data.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"data\.jsonl:2: .*{message.replace('[', '.').replace(']', '.')}"):
        read_dataset(path, fmt, job)


def test_schedule_is_homogeneous_weighted_and_deterministic():
    sizes, weights = [10, 40, 7], [1.0, 3.0, 0.0001]
    schedule = build_schedule(sizes, weights, global_batch=6, steps=400, seed=3)
    again = build_schedule(sizes, weights, global_batch=6, steps=400, seed=3)
    assert np.array_equal(schedule.indices, again.indices)
    counts = np.bincount(schedule.datasets, minlength=3)
    assert 70 < counts[0] < 130 and counts[1] > 270 and counts[2] < 3
    for step in range(400):
        d = schedule.datasets[step]
        row = schedule.indices[step]
        assert len(set(row.tolist())) == 6 and row.max() < sizes[d]  # one dataset, no repeats
        parts = [schedule.rank_slice(step, r, 3)[1] for r in range(2)]
        assert parts[0] + parts[1] == row.tolist()
    # A longer run starts with the same steps (resuming after raising train.steps keeps the past).
    longer = build_schedule(sizes, weights, global_batch=6, steps=500, seed=3)
    assert np.array_equal(longer.indices[:400], schedule.indices)
    with pytest.raises(DataError, match="'small' has 7 records, fewer than the global batch of 8"):
        build_schedule([10, 7], [1, 1], 8, 5, 0, names=["big", "small"])


@pytest.fixture(scope="module")
def renderer(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], "qwen2_vl")
    return Renderer(
        processor, True, PromptConfig(), processor.tokenizer.get_vocab()["<|im_end|>"], "</think>"
    )


def _batches(tmp_path, renderer, rows, bad_data="fail", negatives=0):
    path = _write(tmp_path / "pairs.jsonl", rows)
    records = read_dataset(path, "jsonl", "embedder")
    schedule = build_schedule([len(records)], [1.0], len(records), 1, 0)
    return StepBatches("embedder", [records], schedule, 0, len(records), renderer, bad_data, negatives, None)


def test_bad_images_fail_naming_the_record_or_are_skipped_and_counted(tmp_path, renderer):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [
        {"query": {"image": example("images/red_square.png")}, "pos": "red"},
        {"query": {"image": "missing.png"}, "pos": "gone"},
        {"query": "fine", "pos": "fine"},
        {"query": "blue", "pos": {"image": example("images/blue_circle.png")}},
    ]
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: query: image file not found: '.*missing\.png'"):
        _batches(tmp_path, renderer, rows)[0]
    rows[1], rows[2]["pos"] = {"query": "ok", "pos": "ok"}, {"image": "broken.png"}
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: pos: cannot read image from .*broken\.png"):
        _batches(tmp_path, renderer, rows)[0]
    batch = _batches(tmp_path, renderer, rows, bad_data="skip")[0]
    assert batch["samples"] == 3 and len(batch["skipped"]) == 1 and "pairs.jsonl:3" in batch["skipped"][0]
    assert batch["queries"]["input_ids"].shape[0] == 3 and batch["targets"]["image_grid_thw"].shape[0] == 1
    with pytest.raises(DataError, match=r"pairs\.jsonl:\d: has 0 negatives, data.negatives=1"):
        _batches(tmp_path, renderer, rows, negatives=1)[0]


def test_workers_decode_images_and_report_bad_records(tmp_path, renderer):
    rows = [
        {"query": {"image": example("images/red_square.png"), "text": "q"}, "pos": "red"},
        {"query": "blue", "pos": {"image": example("images/blue_circle.png")}},
    ]
    batches = _batches(tmp_path, renderer, rows)
    loader = DataLoader(batches, batch_size=None, sampler=[0], num_workers=1)
    (from_worker,) = list(loader)
    here = batches[0]
    for side in ("queries", "targets"):
        assert from_worker[side].keys() == here[side].keys()
        for key, value in here[side].items():
            assert torch.equal(from_worker[side][key], value), key
    rows[1]["pos"]["image"] = "nowhere.png"
    loader = DataLoader(_batches(tmp_path, renderer, rows), batch_size=None, sampler=[0], num_workers=1)
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: pos: image file not found"):
        list(loader)


def test_config_overrides_and_unknown_settings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("job: embedder\nmodel: m\noutput_dir: out\ndata:\n  datasets:\n    - path: a.jsonl\n")
    config = load_run_config(str(path), ["train.steps=7", "train.lr=2e-4", "data.datasets.0.weight=2"])
    assert config.train.steps == 7 and config.train.lr == 2e-4 and config.data.datasets[0].weight == 2.0
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['train.step'\]"):
        load_run_config(str(path), ["train.step=7"])
    with pytest.raises(ConfigError, match="job must be one of"):
        load_run_config(str(path), ["job=embed"])
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        load_run_config(str(path), ["train.batch_size=big"])


def test_cli_names_the_config_file_on_errors(tmp_path):
    from tte_fast.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("job: embedder\nmodel: m\noutput_dir: out\ndata:\n  datasets:\n    - path: a.jsonl\n")
    with pytest.raises(SystemExit, match=r"run\.yaml: unknown setting\(s\) \['train.step'\]"):
        main(["train", str(path), "train.step=3"])
