"""Task data readers: the MMEB-eval layout and our own (queries, corpus, qrels).

- ``mmeb``: one parquet or JSONL file, a row per query: ``qry_text``, ``qry_img_path``, ``tgt_text``
  (list), ``tgt_img_path`` (list); candidate 0 is the positive. Candidates are deduplicated by
  (text, image path) into one corpus per task. The Phi-3 image placeholder ``<|image_1|>`` is dropped
  from texts: our prompts place the image themselves.
- ``tte``: a folder with ``queries`` (``id``, ``text``, ``image``, ``instruction``, and for local
  tasks ``candidates``: corpus ids), ``corpus`` (``id``, ``text``, ``image``, ``instruction``), each
  ``.jsonl`` or ``.parquet``, and ``qrels`` (``.jsonl`` with ``query_id``, ``corpus_id``,
  ``relevance``; or a ``.tsv`` with those three columns and a header line), grades > 0 relevant.

Image paths are relative to the task's ``image_root`` (default: the data file's folder). The corpus
is put in the order of a hash of its ids, so position carries no hint of relevance.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from tte_fast.eval.config import TaskConfig

IMAGE_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")


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


def read_rows(path: str) -> list[dict]:
    """The records of a ``.jsonl`` (one object a line), ``.json`` (a list) or ``.parquet`` file."""
    if not os.path.exists(path):
        raise EvalDataError(f"{path}: file not found")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            data = json.load(f)
            if not isinstance(data, list):
                raise EvalDataError(f"{path}: expected a JSON list of records")
            rows = data
        else:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise EvalDataError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvalDataError(f"{path}: record {n} is a {type(row).__name__}, expected an object")
    return rows


def _find(folder: str, stem: str, extensions: tuple[str, ...]) -> str:
    for ext in extensions:
        path = os.path.join(folder, stem + ext)
        if os.path.exists(path):
            return path
    raise EvalDataError(f"{folder}: no {stem} file (looked for {', '.join(stem + e for e in extensions)})")


def _resolve_image(path, root: str, where: str) -> str | None:
    if path is None or path == "":
        return None
    if not isinstance(path, str):
        raise EvalDataError(f"{where}: image must be a path string, got {type(path).__name__}")
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.exists(full):
        raise EvalDataError(f"{where}: image file not found: {full}")
    return full


def _make_input(text, image, instruction, where: str) -> dict:
    if text is not None and not isinstance(text, str):
        raise EvalDataError(f"{where}: text must be a string, got {type(text).__name__}")
    text = IMAGE_PLACEHOLDER.sub("", text or "").strip()
    if not text and image is None:
        raise EvalDataError(f"{where}: has neither text nor image")
    item = {"text": text} if text else {}
    if image is not None:
        item["image"] = image
    if instruction:
        item["instruction"] = instruction
    return item


def _tie_order(ids: list[str]) -> list[int]:
    """Positions of ``ids`` sorted by a hash of each id (then the id): a fixed, content-blind order."""
    return sorted(
        range(len(ids)), key=lambda i: (hashlib.blake2b(ids[i].encode(), digest_size=8).digest(), ids[i])
    )


def _finish(name, query_ids, queries, corpus_ids, corpus, relevance, lists) -> TaskData:
    order = _tie_order(corpus_ids)
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


def _candidate_id(text: str, image: str | None) -> str:
    if image and text:
        return f"{image} :: {text}"
    return image or text


def read_mmeb(task: TaskConfig, path: str, image_root: str) -> TaskData:
    rows = read_rows(path)
    if task.sample_cap:
        rows = rows[: task.sample_cap]
    if not rows:
        raise EvalDataError(f"{path}: no rows")
    query_ids, queries, relevance, lists = [], [], [], []
    corpus_ids, corpus, by_key, taken = [], [], {}, set()
    for n, row in enumerate(rows):
        where = f"{path}: row {n}"
        missing = [c for c in ("qry_text", "tgt_text") if c not in row]
        if missing:
            raise EvalDataError(
                f"{where}: missing columns {missing} (the MMEB-eval layout has qry_text, "
                "qry_img_path, tgt_text, tgt_img_path)"
            )
        image = _resolve_image(row.get("qry_img_path"), image_root, f"{where} (query)")
        queries.append(_make_input(row["qry_text"], image, task.query_instruction, f"{where} (query)"))
        query_ids.append(str(row.get("qry_id", n)))
        texts = row["tgt_text"]
        images = row.get("tgt_img_path") or [None] * len(texts or [])
        if not isinstance(texts, list) or not isinstance(images, list) or not texts:
            raise EvalDataError(f"{where}: tgt_text and tgt_img_path must be non-empty lists")
        if len(images) != len(texts):
            raise EvalDataError(f"{where}: {len(texts)} tgt_text but {len(images)} tgt_img_path")
        ids = []
        for j, (text, img) in enumerate(zip(texts, images)):
            cwhere = f"{where} (candidate {j})"
            text = IMAGE_PLACEHOLDER.sub("", text or "").strip() if isinstance(text, str) else text
            key = (text, img or None)
            if key not in by_key:
                resolved = _resolve_image(img, image_root, cwhere)
                cid = _candidate_id(text or "", img or None)
                while cid in taken:  # two different candidates rendered to one id
                    cid += "#"
                taken.add(cid)
                by_key[key] = cid
                corpus_ids.append(cid)
                corpus.append(_make_input(text, resolved, task.target_instruction, cwhere))
            ids.append(by_key[key])
        relevance.append({ids[0]: 1.0})
        lists.append(ids)
    local = task.eval_type == "local"
    return _finish(task.name, query_ids, queries, corpus_ids, corpus, relevance, lists if local else None)


def _read_qrels(path: str) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    if path.endswith(".tsv"):
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        header, body = lines[0], lines[1:]
        cols = {name: i for i, name in enumerate(header)}
        if not {"query_id", "corpus_id"} <= set(cols):
            raise EvalDataError(f"{path}: the header must name query_id, corpus_id and relevance")
        rows = [{name: parts[i] for name, i in cols.items() if i < len(parts)} for parts in body]
    else:
        rows = read_rows(path)
    for n, row in enumerate(rows):
        grade = row.get("relevance", row.get("score", 1))
        try:
            qrels.setdefault(str(row["query_id"]), {})[str(row["corpus_id"])] = float(grade)
        except (KeyError, TypeError, ValueError):
            raise EvalDataError(
                f"{path}: record {n}: needs query_id, corpus_id and a numeric relevance"
            ) from None
    return qrels


def read_tte(task: TaskConfig, folder: str, image_root: str) -> TaskData:
    if not os.path.isdir(folder):
        raise EvalDataError(f"{folder}: the tte layout needs a folder with queries, corpus and qrels")
    q_path = _find(folder, "queries", (".jsonl", ".parquet", ".json"))
    c_path = _find(folder, "corpus", (".jsonl", ".parquet", ".json"))
    r_path = _find(folder, "qrels", (".jsonl", ".tsv", ".parquet", ".json"))
    qrels = _read_qrels(r_path)
    corpus_ids, corpus = [], []
    for n, row in enumerate(read_rows(c_path)):
        where = f"{c_path}: record {n}"
        if row.get("id") in (None, ""):
            raise EvalDataError(f"{where}: no id")
        cid = str(row["id"])
        image = _resolve_image(row.get("image"), image_root, where)
        corpus.append(
            _make_input(row.get("text"), image, row.get("instruction") or task.target_instruction, where)
        )
        corpus_ids.append(cid)
    known = set(corpus_ids)
    if len(known) != len(corpus_ids):
        repeated = sorted({c for c in corpus_ids if corpus_ids.count(c) > 1})[:5]
        raise EvalDataError(f"{c_path}: corpus ids must be unique; repeated: {repeated}")
    rows = read_rows(q_path)
    if task.sample_cap:
        rows = rows[: task.sample_cap]
    query_ids, queries, relevance, lists = [], [], [], []
    local = task.eval_type == "local"
    for n, row in enumerate(rows):
        where = f"{q_path}: record {n}"
        if row.get("id") in (None, ""):
            raise EvalDataError(f"{where}: no id")
        qid = str(row["id"])
        grades = qrels.get(qid, {})
        unknown = sorted(set(grades) - known)
        if unknown:
            raise EvalDataError(f"{r_path}: query {qid!r} judges corpus ids not in {c_path}: {unknown[:5]}")
        if not any(g > 0 for g in grades.values()):
            raise EvalDataError(f"{where}: query {qid!r} has no relevant corpus id in {r_path}")
        image = _resolve_image(row.get("image"), image_root, where)
        queries.append(
            _make_input(row.get("text"), image, row.get("instruction") or task.query_instruction, where)
        )
        query_ids.append(qid)
        relevance.append(grades)
        if local:
            ids = row.get("candidates")
            if not isinstance(ids, list) or not ids:
                raise EvalDataError(f"{where}: a local task needs a non-empty candidates list per query")
            bad = sorted({str(c) for c in ids} - known)
            if bad:
                raise EvalDataError(f"{where}: candidates not in {c_path}: {bad[:5]}")
            lists.append([str(c) for c in ids])
    if not queries:
        raise EvalDataError(f"{q_path}: no queries")
    return _finish(task.name, query_ids, queries, corpus_ids, corpus, relevance, lists if local else None)


def read_task(task: TaskConfig, base_dir: str = ".") -> TaskData:
    """Read ``task``'s data; relative paths start at ``base_dir``."""
    path = task.data_path if os.path.isabs(task.data_path) else os.path.join(base_dir, task.data_path)
    default_root = path if os.path.isdir(path) else os.path.dirname(path)
    root = task.image_root
    if root is None:
        root = default_root
    elif not os.path.isabs(root):
        root = os.path.join(base_dir, root)
    if task.dataset_parser == "mmeb":
        return read_mmeb(task, path, root)
    return read_tte(task, path, root)
