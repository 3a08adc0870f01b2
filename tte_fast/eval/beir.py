"""Visual-document retrieval in BEIR layout, as the ViDoRe ``*_beir`` and ``VisRAG-Ret-Test-*`` sets
publish it: three tables, each a file or a folder of shards (parquet, JSONL; qrels also TSV):

- ``queries``: ``query-id``, ``query`` (and ``language`` in ViDoRe v2, which ``language`` filters on);
- ``corpus``: ``corpus-id``, ``image``: Hugging Face's image cell ``{"bytes", "path"}`` (the bytes
  are used as they are; without them the path, from ``image_root``) or a path string. A page is its
  image alone: other columns (ViDoRe's ``markdown`` and the like) are not read, as VLM2Vec reads none;
- ``qrels``: ``query-id``, ``corpus-id``, ``score``: graded relevance; as VLM2Vec reads it, grades
  <= 0 are dropped and a pair judged twice keeps its higher grade.

Every query is ranked against the whole corpus (a global task) and needs one relevant document.
Ids may be numbers in the published files; they are compared as strings.
"""

from __future__ import annotations

from collections import Counter

from tte_fast.eval.config import TaskConfig
from tte_fast.eval.records import EvalDataError, TaskData, finish_task, make_input, resolve_image

TABLES = ("queries", "corpus", "qrels")


def _id(row: dict, column: str, where: str) -> str:
    value = row.get(column)
    if value is None or value == "":
        raise EvalDataError(f"{where}: no {column} (columns: {sorted(row)})")
    return str(value)


def _image(cell, image_root: str, where: str):
    """Image bytes or a resolved path from a corpus ``image`` cell."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    image = resolve_image(cell, image_root, where)
    if image is None:
        raise EvalDataError(f"{where}: no image")
    return image


def read_qrels(rows: list[dict], source: str) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    for n, row in enumerate(rows):
        where = f"{source}: record {n}"
        qid, cid = _id(row, "query-id", where), _id(row, "corpus-id", where)
        try:
            grade = float(row.get("score", 1))
        except (TypeError, ValueError):
            raise EvalDataError(f"{where}: score must be a number, got {row.get('score')!r}") from None
        if grade > 0:
            judged = qrels.setdefault(qid, {})
            judged[cid] = max(judged.get(cid, 0.0), grade)
    return qrels


def read_beir(
    task: TaskConfig, tables: dict[str, list[dict]], sources: dict[str, str], image_root: str
) -> TaskData:
    """The task from the three tables (``sources`` names each in errors)."""
    if task.eval_type != "global":
        raise EvalDataError(f"task {task.name!r}: BEIR tasks rank the whole corpus: set eval_type: global")
    qrels = read_qrels(tables["qrels"], sources["qrels"])
    corpus_ids, corpus = [], []
    for n, row in enumerate(tables["corpus"]):
        where = f"{sources['corpus']}: record {n}"
        corpus_ids.append(_id(row, "corpus-id", where))
        image = _image(row.get("image"), image_root, where)
        corpus.append(make_input(None, image, task.target_instruction, where))
    known = set(corpus_ids)
    if len(known) != len(corpus_ids):
        repeated = sorted(c for c, k in Counter(corpus_ids).items() if k > 1)
        raise EvalDataError(f"{sources['corpus']}: corpus-id must be unique; repeated: {repeated[:5]}")
    rows = list(enumerate(tables["queries"]))  # record numbers as in the file, also after filtering
    if task.language is not None:
        languages = sorted({str(r.get("language")) for _, r in rows})
        rows = [(n, r) for n, r in rows if r.get("language") == task.language]
        if not rows:
            raise EvalDataError(
                f"{sources['queries']}: no query has language {task.language!r} (found: {languages})"
            )
    if task.sample_cap:
        rows = rows[: task.sample_cap]
    if not rows:
        raise EvalDataError(f"{sources['queries']}: no queries")
    query_ids, queries, relevance = [], [], []
    for n, row in rows:
        where = f"{sources['queries']}: record {n}"
        qid = _id(row, "query-id", where)
        grades = qrels.get(qid)
        if not grades:
            raise EvalDataError(f"{where}: query {qid!r} has no relevant corpus-id in {sources['qrels']}")
        unknown = sorted(set(grades) - known)
        if unknown:
            raise EvalDataError(
                f"{sources['qrels']}: query {qid!r} judges corpus ids not in "
                f"{sources['corpus']}: {unknown[:5]}"
            )
        if not isinstance(row.get("query"), str) or not row["query"].strip():
            raise EvalDataError(f"{where}: query {qid!r} has no query text (got {row.get('query')!r})")
        queries.append(make_input(row["query"], None, task.query_instruction, where))
        query_ids.append(qid)
        relevance.append(grades)
    return finish_task(task.name, query_ids, queries, corpus_ids, corpus, relevance, None)
