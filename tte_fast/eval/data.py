"""Task data: where each task's records come from, and our own layout (queries, corpus, qrels).

- ``mmeb`` (:mod:`tte_fast.eval.mmeb`): one parquet or JSONL file (or a folder of shards), a row per
  query with its candidates, MMEB-V2's ``qry_inst`` / ``tgt_inst`` applied as instructions.
- ``beir`` (:mod:`tte_fast.eval.beir`): visual-document retrieval as ViDoRe and VisRAG publish it
  (``queries``, ``corpus`` with images, graded ``qrels``).
- ``tte``: a folder with ``queries`` (``id``, ``text``, ``image``, ``instruction``, and for local
  tasks ``candidates``: corpus ids), ``corpus`` (``id``, ``text``, ``image``, ``instruction``), each
  ``.jsonl`` or ``.parquet``, and ``qrels`` (``.jsonl`` with ``query_id``, ``corpus_id``,
  ``relevance``; or a ``.tsv`` with those three columns and a header line), grades > 0 relevant.

- ``video`` (:mod:`tte_fast.eval.video_rows`): MMEB-V2's video tasks, VLM2Vec's rows (their layout
  named by ``video_parser``) with each video's saved frames under ``frame_root``.

``mmeb``, ``beir`` and ``video`` tasks can instead name ``hf_dataset`` (and ``hf_subset``, ``dataset_split``):
the records then come through the ``datasets`` library (:mod:`tte_fast.eval.hf_source`).
Image paths are relative to the task's ``image_root`` (default: the data file's folder).
"""

from __future__ import annotations

import os

from tte_fast.eval.beir import TABLES, read_beir
from tte_fast.eval.config import TaskConfig
from tte_fast.eval.hf_source import DEFAULT_SPLIT, load_rows
from tte_fast.eval.mmeb import read_mmeb
from tte_fast.eval.records import (
    EvalDataError,
    TaskData,
    find_file,
    finish_task,
    make_input,
    read_rows,
    read_table,
    resolve_image,
)
from tte_fast.eval.video_rows import read_video_task

__all__ = ["EvalDataError", "TaskData", "read_rows", "read_task"]


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
    q_path = find_file(folder, "queries", (".jsonl", ".parquet", ".json"))
    c_path = find_file(folder, "corpus", (".jsonl", ".parquet", ".json"))
    r_path = find_file(folder, "qrels", (".jsonl", ".tsv", ".parquet", ".json"))
    qrels = _read_qrels(r_path)
    corpus_ids, corpus = [], []
    for n, row in enumerate(read_rows(c_path)):
        where = f"{c_path}: record {n}"
        if row.get("id") in (None, ""):
            raise EvalDataError(f"{where}: no id")
        cid = str(row["id"])
        image = resolve_image(row.get("image"), image_root, where)
        corpus.append(
            make_input(row.get("text"), image, row.get("instruction") or task.target_instruction, where)
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
        image = resolve_image(row.get("image"), image_root, where)
        queries.append(
            make_input(row.get("text"), image, row.get("instruction") or task.query_instruction, where)
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
    return finish_task(task.name, query_ids, queries, corpus_ids, corpus, relevance, lists if local else None)


def _beir_tables(task: TaskConfig, folder: str) -> tuple[dict, dict]:
    """The three tables from ``folder``: ``NAME.parquet|.jsonl|.json|.tsv`` or a ``NAME/`` folder of
    shards (Hugging Face's ``NAME/SPLIT-00000-of-00001.parquet``, BEIR's ``qrels/test.tsv``)."""
    if not os.path.isdir(folder):
        raise EvalDataError(f"{folder}: the beir layout needs a folder with queries, corpus and qrels")
    tables, sources = {}, {}
    for name in TABLES:
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            path = find_file(folder, name, (".parquet", ".jsonl", ".json", ".tsv"))
        tables[name], sources[name] = read_table(path, task.dataset_split)
    return tables, sources


def _hf_tables(task: TaskConfig) -> tuple[dict, dict]:
    tables, sources = {}, {}
    for name in TABLES:
        tables[name], sources[name] = load_rows(task.hf_dataset, name, task.dataset_split or DEFAULT_SPLIT)
    return tables, sources


def _resolve(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def read_task(task: TaskConfig, base_dir: str = ".") -> TaskData:
    """Read ``task``'s data; relative paths start at ``base_dir``."""
    path = _resolve(base_dir, task.data_path) if task.data_path else None
    if task.image_root is not None:
        root = _resolve(base_dir, task.image_root)
    elif path is None:
        root = base_dir
    else:
        root = path if os.path.isdir(path) else os.path.dirname(path)
    if task.dataset_parser == "mmeb":
        if path is None:
            rows, source = load_rows(task.hf_dataset, task.hf_subset, task.dataset_split or DEFAULT_SPLIT)
        else:
            rows, source = read_table(path, task.dataset_split)
        return read_mmeb(task, rows, source, root)
    if task.dataset_parser == "beir":
        tables, sources = _beir_tables(task, path) if path else _hf_tables(task)
        return read_beir(task, tables, sources, root)
    if task.dataset_parser == "video":
        if path is None:
            rows, source = load_rows(task.hf_dataset, task.hf_subset, task.dataset_split or DEFAULT_SPLIT)
        else:
            rows, source = read_table(path, task.dataset_split)
        return read_video_task(task, rows, source, _resolve(base_dir, task.frame_root))
    return read_tte(task, path, root)
