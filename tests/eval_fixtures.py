"""A small two-task evaluation (one MMEB-layout local task, one of our layout, global and graded)
written to a folder, and a model wrapper that counts calls; shared by the evaluation tests."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

THINK_TOKENS = 3


def write_dataset(folder: str) -> dict:
    """Write the data under ``folder``; returns the evaluation config mapping (paths relative to it)."""
    os.makedirs(os.path.join(folder, "set"), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"im{i}.png")
        )
    mmeb = [
        {
            "qry_text": "<|image_1|> what is shown",
            "qry_img_path": "im0.png",
            "tgt_text": ["noise", "a dog", "a cat"],
            "tgt_img_path": ["", "", ""],
        },
        {
            "qry_text": "a dog",
            "qry_img_path": "",
            "tgt_text": ["<|image_1|>", "<|image_1|>", "a dog"],
            "tgt_img_path": ["im1.png", "im2.png", ""],
        },
        {
            "qry_text": "a cat",
            "qry_img_path": "",
            "tgt_text": ["a cat", "a dog", "noise"],
            "tgt_img_path": ["", "", ""],
        },
    ]
    with open(os.path.join(folder, "mmeb.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in mmeb)
    corpus = [
        {"id": "t0", "text": "red"},
        {"id": "t1", "text": "green things"},
        {"id": "i1", "image": "../im1.png"},
        {"id": "i2", "image": "../im2.png", "text": "blue"},
    ]
    queries = [{"id": "qa", "text": "red or green"}, {"id": "qb", "image": "../im0.png"}]
    qrels = [
        {"query_id": "qa", "corpus_id": "t0", "relevance": 2},
        {"query_id": "qa", "corpus_id": "t1", "relevance": 1},
        {"query_id": "qb", "corpus_id": "i2", "relevance": 1},
    ]
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        with open(os.path.join(folder, "set", f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return {
        "encode": {"batch_size": 4, "max_think_tokens": THINK_TOKENS, "progress": False},
        "tasks": [
            {
                "name": "mmeb_local",
                "data_path": "mmeb.jsonl",
                "eval_type": "local",
                "meta_task": "classification",
            },
            {
                "name": "ours_global",
                "dataset_parser": "tte",
                "data_path": "set",
                "eval_type": "global",
                "meta_task": "visdoc",
            },
        ],
    }


class Counting:
    """Counts the inputs a wrapped method is called with (by method name)."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def wrap(self, obj, name: str, label: str):
        original = getattr(obj, name)

        def counted(inputs, *args, **kwargs):
            self.calls[label] = self.calls.get(label, 0) + len(inputs)
            return original(inputs, *args, **kwargs)

        setattr(obj, name, counted)
        return self

    def total(self) -> int:
        return sum(self.calls.values())
