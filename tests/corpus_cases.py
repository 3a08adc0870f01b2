"""Small corpora and checks shared by the corpus-encoding tests."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
from PIL import Image

from tte_fast.corpus import embeddings_of
from tte_fast.corpus.store import read_table

THINK = "2"  # think budget: short traces keep the tests fast


def write_corpus(folder, items: list, name: str = "corpus.jsonl") -> str:
    """``items`` one JSON value a line next to ``cat.png`` (a small image) and ``broken.png`` (not one)."""
    folder = str(folder)
    pixels = np.random.default_rng(0).integers(0, 256, (28, 42, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, "cat.png"))
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"\x89PNG but not really")
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x) + "\n" for x in items)
    return path


def mixed_items(n: int) -> list:
    """``n`` inputs with ids: texts, some with the image, one with instructions."""
    items = []
    for i in range(n):
        item = {"id": f"doc-{i:03d}", "text": f"item {i} " + "word " * (i % 4)}
        if i % 3 == 1:
            item["image"] = "cat.png"
        if i % 5 == 4:
            item["instruction"] = "Find a matching caption."
        items.append(item)
    return items


def encode_args(model: str, inputs: str, output: str, *flags: str) -> list[str]:
    return [
        "encode",
        "--model",
        model,
        "--inputs",
        inputs,
        "--output",
        output,
        "--max-think-tokens",
        THINK,
        "--quiet",
        *flags,
    ]


def sorted_table(folder) -> pa.Table:
    table = read_table(str(folder))
    return table.sort_by("id")


def assert_same_table(actual: pa.Table, expected: pa.Table) -> None:
    """Same ids (each once), traces, errors and embeddings (bit for bit)."""
    ids = actual.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids in the output"
    assert ids == expected.column("id").to_pylist()
    assert actual.column("trace").to_pylist() == expected.column("trace").to_pylist()
    assert actual.column("error").to_pylist() == expected.column("error").to_pylist()
    np.testing.assert_array_equal(embeddings_of(actual), embeddings_of(expected))
