"""Tiny task data in the layouts MMEB-V2 publishes, written by the tests: instructed MMEB rows
(``MMEB_Test_Instruct``), a BEIR repository as ViDoRe ``*_beir`` (split test, numeric ids) and
``VisRAG-Ret-Test-*`` (split train, file-name ids) publish it (parquet shards, image cells with
bytes), and a classic BEIR folder (JSONL tables, image paths, ``qrels/test.tsv``)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CLASSIFY = "Represent the given image for classification"
FIND_IMAGE = "Find me an everyday image that matches the given caption:"
REPRESENT_IMAGE = "Represent the given image."
LABEL = "Represent the class label:"

# Three instructed rows: image -> label, caption -> image, and one with no instructions at all.
MMEB_V2_ROWS = [
    {
        "qry_inst": f"<|image_1|> {CLASSIFY}",
        "qry_text": "",
        "qry_img_path": "a.png",
        "tgt_inst": LABEL,
        "tgt_text": ["cat", "dog", "bird"],
        "tgt_img_path": ["", "", ""],
    },
    {
        "qry_inst": FIND_IMAGE,
        "qry_text": "a blue square",
        "qry_img_path": "",
        "tgt_inst": f"<|image_1|> {REPRESENT_IMAGE}",
        "tgt_text": ["", ""],
        "tgt_img_path": ["b.png", "a.png"],
    },
    {
        "qry_inst": None,
        "qry_text": "which is a dog",
        "qry_img_path": "",
        "tgt_inst": None,
        "tgt_text": ["dog", "cat"],
        "tgt_img_path": ["", ""],
    },
]


def png_bytes(seed: int, size=(20, 28)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder, names=("a.png", "b.png")) -> None:
    os.makedirs(folder, exist_ok=True)
    for seed, name in enumerate(names):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(png_bytes(seed))


def write_jsonl(path, rows) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def write_mmeb_v2_shard(folder, task: str = "ImageNet-1K", rows=MMEB_V2_ROWS) -> str:
    """``folder/TASK/test-00000-of-00001.parquet``, as the Hugging Face repository holds a subset."""
    path = os.path.join(folder, task, "test-00000-of-00001.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# Graded judgments: q1 has two relevant pages (grades 2 and 1) and a 0 that is no judgment; q2 one
# page, judged twice (the higher grade counts); q3 is in French (ViDoRe v2 filters by language).
BEIR_QUERIES = [
    {"query-id": 1, "query": "revenue by year", "language": "english"},
    {"query-id": 2, "query": "the blue chart", "language": "english"},
    {"query-id": 3, "query": "le graphique bleu", "language": "french"},
]
BEIR_QRELS = [
    {"query-id": 1, "corpus-id": 10, "score": 2},
    {"query-id": 1, "corpus-id": 11, "score": 1},
    {"query-id": 1, "corpus-id": 12, "score": 0},
    {"query-id": 2, "corpus-id": 12, "score": 2},
    {"query-id": 2, "corpus-id": 12, "score": 1},
    {"query-id": 3, "corpus-id": 12, "score": 1},
]
CORPUS_IDS = (10, 11, 12, 13)


def corpus_id(c: int, split: str):
    """ViDoRe numbers its pages; VisRAG names them by file."""
    return c if split == "test" else f"page_{c}.png"


def write_parquet_beir(folder, split: str = "test") -> str:
    """A BEIR repository: ``queries/``, ``corpus/`` (two shards, image cells holding PNG bytes) and
    ``qrels/`` of parquet files named ``SPLIT-0000i-of-0000n.parquet``."""
    corpus = [
        {
            "corpus-id": corpus_id(c, split),
            "image": {"bytes": png_bytes(c), "path": f"{c}.png"},
            "text": f"OCR of page {c}",  # a page is its image: columns like this one are not read
        }
        for c in CORPUS_IDS
    ]
    qrels = [{**r, "corpus-id": corpus_id(r["corpus-id"], split)} for r in BEIR_QRELS]
    shards = {
        "queries": [BEIR_QUERIES],
        "corpus": [corpus[:2], corpus[2:]],
        "qrels": [qrels],
    }
    for name, parts in shards.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i, rows in enumerate(parts):
            path = os.path.join(folder, name, f"{split}-{i:05d}-of-{len(parts):05d}.parquet")
            pq.write_table(pa.Table.from_pylist(rows), path)
    return str(folder)


def write_jsonl_beir(folder) -> str:
    """A BEIR folder of JSONL tables with image paths (from ``image_root``) and ``qrels/test.tsv``."""
    images = os.path.join(folder, "images")
    write_images(images, [f"{c}.png" for c in CORPUS_IDS])
    write_jsonl(
        os.path.join(folder, "queries.jsonl"),
        [{k: q[k] for k in ("query-id", "query")} for q in BEIR_QUERIES[:2]],
    )
    write_jsonl(
        os.path.join(folder, "corpus.jsonl"), [{"corpus-id": f"{c}", "image": f"{c}.png"} for c in CORPUS_IDS]
    )
    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
    with open(os.path.join(folder, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in BEIR_QRELS[:5])
    return str(folder)
