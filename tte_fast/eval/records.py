"""What every task reader shares: the task's data (:class:`TaskData`), reading records from files
(one file or a folder of shards), resolving images, building model inputs and the corpus order.

The corpus is put in the order of a hash of its ids, so position carries no hint of relevance.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass

IMAGE_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
RECORD_EXTENSIONS = (".parquet", ".jsonl", ".json", ".tsv")


class EvalDataError(ValueError):
    """Bad task data; the message names the file and the record."""


@dataclass
class TaskData:
    """One task's inputs, ready to encode and score."""

    name: str
    query_ids: list[str]
    queries: list[dict]
    corpus_ids: list[str]
    corpus: list[dict]
    relevance: list[dict[str, float]]  # per query: corpus id -> grade
    candidates: list[list[int]] | None  # per query: corpus indices (local tasks); None: global

    @property
    def local(self) -> bool:
        return self.candidates is not None


def _read_file(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        if path.endswith(".tsv"):  # a header line names the columns; values stay strings
            lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
            if not lines:
                return []
            header = lines[0]
            return [dict(zip(header, parts)) for parts in lines[1:]]
        if path.endswith(".json"):
            data = json.load(f)
            if not isinstance(data, list):
                raise EvalDataError(f"{path}: expected a JSON list of records")
            return data
        rows = []
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        return rows


def shard_files(folder: str, split: str | None, extensions=RECORD_EXTENSIONS) -> list[str]:
    """The record files of one split in ``folder``, sorted: ``SPLIT-00000-of-00002.parquet`` and the
    like (Hugging Face's layout), ``SPLIT.jsonl``, or the files of a ``SPLIT/`` subfolder. Without a
    split, every file, which must then all belong to one split."""
    if split is not None and os.path.isdir(os.path.join(folder, split)):
        folder = os.path.join(folder, split)
        split = None
    files = sorted(p for ext in extensions for p in glob.glob(os.path.join(folder, "*" + ext)))
    if split is not None:
        files = [p for p in files if re.match(rf"{re.escape(split)}([-_.]|$)", os.path.basename(p))]
    if not files:
        wanted = f"split {split!r} " if split else ""
        raise EvalDataError(f"{folder}: no {wanted}files ({', '.join(extensions)})")
    if split is None:
        splits = sorted({re.split(r"[-_.]", os.path.basename(p))[0] for p in files})
        if len(splits) > 1:
            raise EvalDataError(f"{folder}: files of several splits {splits}; set dataset_split")
    return files


def read_table(path: str, split: str | None = None) -> tuple[list[dict], str]:
    """(the records of ``path``, the name errors give them): a ``.jsonl`` (one object a line),
    ``.json`` (a list), ``.parquet`` or ``.tsv`` (with a header line) file, or every shard of
    ``split`` in a folder (see :func:`shard_files`), named by its file when there is one."""
    if not os.path.exists(path):
        raise EvalDataError(f"{path}: file not found")
    paths = shard_files(path, split) if os.path.isdir(path) else [path]
    source = paths[0] if len(paths) == 1 else f"{path} ({len(paths)} shards)"
    rows = [row for p in paths for row in _read_file(p)]
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvalDataError(f"{source}: record {n} is a {type(row).__name__}, expected an object")
    return rows, source


def read_rows(path: str, split: str | None = None) -> list[dict]:
    """The records of :func:`read_table`."""
    return read_table(path, split)[0]


def find_file(folder: str, stem: str, extensions: tuple[str, ...]) -> str:
    for ext in extensions:
        path = os.path.join(folder, stem + ext)
        if os.path.exists(path):
            return path
    raise EvalDataError(f"{folder}: no {stem} file (looked for {', '.join(stem + e for e in extensions)})")


def resolve_image(path, root: str, where: str) -> str | None:
    if path is None or path == "":
        return None
    if not isinstance(path, str):
        raise EvalDataError(f"{where}: image must be a path string, got {type(path).__name__}")
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.exists(full):
        raise EvalDataError(f"{where}: image file not found: {full}")
    return full


def clean_text(text, where: str, column: str = "text") -> str:
    """``text`` without Phi-3 image placeholders (our prompts place the image themselves)."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise EvalDataError(f"{where}: {column} must be a string, got {type(text).__name__}: {text!r:.80}")
    return IMAGE_PLACEHOLDER.sub("", text).strip()


def make_input(text, image, instruction, where: str) -> dict:
    text = clean_text(text, where)
    if not text and image is None:
        raise EvalDataError(f"{where}: has neither text nor image")
    item = {"text": text} if text else {}
    if image is not None:
        item["image"] = image
    if instruction:
        item["instruction"] = instruction
    return item


def tie_order(ids: list[str]) -> list[int]:
    """Positions of ``ids`` sorted by a hash of each id (then the id): a fixed, content-blind order."""
    return sorted(
        range(len(ids)), key=lambda i: (hashlib.blake2b(ids[i].encode(), digest_size=8).digest(), ids[i])
    )


def finish_task(name, query_ids, queries, corpus_ids, corpus, relevance, lists) -> TaskData:
    """The task with its corpus in :func:`tie_order` and candidate lists (ids) as corpus indices."""
    order = tie_order(corpus_ids)
    position = {corpus_ids[old]: new for new, old in enumerate(order)}
    candidates = None
    if lists is not None:
        candidates = [[position[c] for c in dict.fromkeys(ids)] for ids in lists]
    return TaskData(
        name,
        query_ids,
        queries,
        [corpus_ids[i] for i in order],
        [corpus[i] for i in order],
        relevance,
        candidates,
    )
