"""Training records from disk: our JSONL records and the MMEB (VLM2Vec) training layout.

Each reader checks every record's structure up front and names the record (``file:line`` or
``file row N``) in its error; images are only resolved to paths here (relative to the image root,
by default the data file's folder) and decoded later, in the DataLoader workers.

- embedder / head JSONL: ``{"query": {...}, "pos": {...}, "negs": [{...}], "query_trace": str,
  "pos_trace": str}``; an input is ``{"text", "image", "video", "instruction"}`` (or a plain string;
  a video is a file or a folder of frames). A trace
  is what ``UnifiedTTE.think`` returns (think prefix included), appended as ``encode(traces=...)`` does.
- reasoner JSONL: ``{"input": {...}, "trace": str, "answer": str}``; the trace is the reasoning text
  without the ``<think>`` tags, which training adds.
- MMEB: parquet or JSONL with ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path`` and
  optional ``neg_text``, ``neg_image_path``; VLM2Vec's ``<|image_1|>`` placeholder marks the image,
  which our prompts put before the text, so it is removed from the text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tte_fast.inputs import INPUT_KEYS

PAIR_KEYS = ("query", "pos", "negs", "query_trace", "pos_trace")
SFT_KEYS = ("input", "trace", "answer")
MMEB_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
MMEB_IMAGE_TOKEN = "<|image_1|>"


class DataError(ValueError):
    """A bad training record; the message starts with the file and the record."""


@dataclass
class PairRecord:
    """A contrastive example: query, positive, hard negatives; each input has text / image / instruction."""

    source: str
    query: dict
    pos: dict
    negs: list[dict] = field(default_factory=list)
    query_trace: str | None = None
    pos_trace: str | None = None


@dataclass
class SFTRecord:
    """A reasoner SFT example: the input and the teacher's trace and answer."""

    source: str
    input: dict
    trace: str
    answer: str


def read_dataset(path: str, fmt: str, job: str, image_root: str | None = None, instruction=None) -> list:
    """All records of one dataset file, checked; ``instruction`` replaces each query's instruction."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found")
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    if fmt == "mmeb":
        if job == "reasoner":
            raise DataError(f"{path}: the MMEB layout holds contrastive pairs; the reasoner job reads JSONL")
        rows = _parquet_rows(path) if path.endswith(".parquet") else _jsonl_rows(path)
        records = [_mmeb_record(source, row, root) for source, row in rows]
    else:
        parse = _sft_record if job == "reasoner" else _pair_record
        records = [parse(source, row, root) for source, row in _jsonl_rows(path)]
    if instruction is not None:
        for r in records:
            if isinstance(r, PairRecord):
                r.query["instruction"] = instruction
            else:
                r.input["instruction"] = instruction
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _jsonl_rows(path: str):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{source}: expected a JSON object, got {type(row).__name__}")
            yield source, row


def _parquet_rows(path: str):
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path} row {number}", row


def _check_keys(source: str, row: dict, known: tuple, what: str) -> None:
    unknown = sorted(set(row) - set(known))
    if unknown:
        raise DataError(f"{source}: unknown {what} {unknown}; expected {list(known)}")


def _input(source: str, raw, root: str, name: str) -> dict:
    """A checked input dict with its image path resolved against ``root``."""
    if isinstance(raw, str):
        raw = {"text": raw}
    if not isinstance(raw, dict):
        raise DataError(f"{source}: {name!r} must be an object or a string, got {type(raw).__name__}")
    _check_keys(source, raw, INPUT_KEYS, f"keys in {name!r}")
    for key in INPUT_KEYS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise DataError(f"{source}: {name}.{key} must be a string, got {type(raw[key]).__name__}")
    text, image, video = (raw.get("text") or "").strip(), raw.get("image") or None, raw.get("video") or None
    if not text and image is None and video is None:
        raise DataError(f"{source}: {name!r} is empty (needs a non-empty text, an image or a video)")
    # Media paths (a video: a file or a folder of frames) are relative to the records' folder.
    image, video = (p if p is None or os.path.isabs(p) else os.path.join(root, p) for p in (image, video))
    out = {"text": text or None, "image": image, "instruction": raw.get("instruction") or None}
    return {**out, "video": video} if video is not None else out


def _string(source: str, row: dict, key: str, required: bool) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"{source}: missing or empty {key!r}")
        return None
    if not isinstance(value, str):
        raise DataError(f"{source}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _pair_record(source: str, row: dict, root: str) -> PairRecord:
    _check_keys(source, row, PAIR_KEYS, "keys")
    for key in ("query", "pos"):
        if row.get(key) is None:
            raise DataError(f"{source}: missing {key!r}")
    negs = row.get("negs") or []
    if not isinstance(negs, list):
        raise DataError(f"{source}: 'negs' must be a list, got {type(negs).__name__}")
    return PairRecord(
        source,
        _input(source, row["query"], root, "query"),
        _input(source, row["pos"], root, "pos"),
        [_input(source, n, root, f"negs.{i}") for i, n in enumerate(negs)],
        _string(source, row, "query_trace", False),
        _string(source, row, "pos_trace", False),
    )


def _sft_record(source: str, row: dict, root: str) -> SFTRecord:
    _check_keys(source, row, SFT_KEYS, "keys")
    if row.get("input") is None:
        raise DataError(f"{source}: missing 'input'")
    trace = _string(source, row, "trace", True)
    if "<think>" in trace or "</think>" in trace:
        raise DataError(f"{source}: 'trace' is the reasoning text without <think> tags (training adds them)")
    return SFTRecord(
        source, _input(source, row["input"], root, "input"), trace, _string(source, row, "answer", True)
    )


def _mmeb_side(source: str, text, image_path, root: str, name: str) -> dict:
    if text is not None and not isinstance(text, str):
        raise DataError(f"{source}: {name} text must be a string, got {type(text).__name__}")
    text = text or ""
    has_placeholder = MMEB_IMAGE_TOKEN in text
    text = text.replace(MMEB_IMAGE_TOKEN, "").strip()
    if has_placeholder and not image_path:
        raise DataError(f"{source}: {name} text has {MMEB_IMAGE_TOKEN} but no image path")
    return _input(source, {"text": text or None, "image": image_path or None}, root, name)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _mmeb_record(source: str, row: dict, root: str) -> PairRecord:
    _check_keys(source, row, MMEB_COLUMNS, "columns")
    if not (row.get("qry") or row.get("qry_image_path")) or not (
        row.get("pos_text") or row.get("pos_image_path")
    ):
        raise DataError(f"{source}: empty record (needs qry / qry_image_path and pos_text / pos_image_path)")
    texts, images = _as_list(row.get("neg_text")), _as_list(row.get("neg_image_path"))
    count = max(len(texts), len(images))
    texts, images = texts + [None] * (count - len(texts)), images + [None] * (count - len(images))
    negs = [
        _mmeb_side(source, t, p, root, f"neg {i}") for i, (t, p) in enumerate(zip(texts, images)) if t or p
    ]
    return PairRecord(
        source,
        _mmeb_side(source, row.get("qry"), row.get("qry_image_path"), root, "qry"),
        _mmeb_side(source, row.get("pos_text"), row.get("pos_image_path"), root, "pos"),
        negs,
    )
