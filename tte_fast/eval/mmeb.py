"""The MMEB-eval layout: a row per query, its candidates inline, candidate 0 the positive.

Columns: ``qry_text``, ``qry_img_path``, ``tgt_text`` (list), ``tgt_img_path`` (list), and in
MMEB-V2's instructed rows (``MMEB_Test_Instruct``) also ``qry_inst`` and ``tgt_inst``. V2 keeps the
task instruction out of the text: ``qry_inst`` becomes the query's ``instruction`` and ``tgt_inst``
(one per row, or one per candidate) each candidate's, so our prompts render them as instructions.
A row without one falls back to the task's ``query_instruction`` / ``target_instruction``. (V1 rows
carry the instruction inside ``qry_text``, which is kept as text.)

Candidates are deduplicated by (text, image path, instruction) into one corpus per task. The Phi-3
image placeholder ``<|image_1|>`` is dropped from texts and instructions: our prompts place the
image themselves.
"""

from __future__ import annotations

from tte_fast.eval.config import TaskConfig
from tte_fast.eval.records import EvalDataError, TaskData, clean_text, finish_task, make_input, resolve_image

REQUIRED = ("qry_text", "tgt_text")


def _candidate_id(text: str, image: str | None) -> str:
    if image and text:
        return f"{image} :: {text}"
    return image or text


def _target_instructions(row: dict, count: int, where: str) -> list[str]:
    """``tgt_inst`` as one cleaned instruction per candidate ("" where the row gives none)."""
    value = row.get("tgt_inst")
    if isinstance(value, list):
        if len(value) != count:
            raise EvalDataError(f"{where}: {count} tgt_text but {len(value)} tgt_inst")
        return [clean_text(v, where, "tgt_inst") for v in value]
    return [clean_text(value, where, "tgt_inst")] * count


def read_mmeb(task: TaskConfig, rows: list[dict], source: str, image_root: str) -> TaskData:
    """``rows`` read from ``source`` (named in errors); image paths start at ``image_root``."""
    if task.sample_cap:
        rows = rows[: task.sample_cap]
    if not rows:
        raise EvalDataError(f"{source}: no rows")
    query_ids, queries, relevance, lists = [], [], [], []
    corpus_ids, corpus, by_key, taken = [], [], {}, set()
    for n, row in enumerate(rows):
        where = f"{source}: row {n}"
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise EvalDataError(
                f"{where}: missing columns {missing} (the MMEB-eval layout has qry_inst, qry_text, "
                "qry_img_path, tgt_inst, tgt_text, tgt_img_path)"
            )
        qwhere = f"{where} (query)"
        image = resolve_image(row.get("qry_img_path"), image_root, qwhere)
        instruction = clean_text(row.get("qry_inst"), qwhere, "qry_inst") or task.query_instruction
        queries.append(make_input(row["qry_text"], image, instruction, qwhere))
        query_ids.append(str(row.get("qry_id", n)))
        texts = row["tgt_text"]
        images = row.get("tgt_img_path") or [None] * len(texts or [])
        if not isinstance(texts, list) or not isinstance(images, list) or not texts:
            raise EvalDataError(f"{where}: tgt_text and tgt_img_path must be non-empty lists")
        if len(images) != len(texts):
            raise EvalDataError(f"{where}: {len(texts)} tgt_text but {len(images)} tgt_img_path")
        instructions = _target_instructions(row, len(texts), where)
        ids = []
        for j, (text, img, inst) in enumerate(zip(texts, images, instructions)):
            cwhere = f"{where} (candidate {j})"
            text = clean_text(text, cwhere, "tgt_text")
            inst = inst or task.target_instruction
            key = (text, img or None, inst or None)
            if key not in by_key:
                resolved = resolve_image(img, image_root, cwhere)
                cid = _candidate_id(text, img or None)
                while cid in taken:  # two different candidates rendered to one id
                    cid += "#"
                taken.add(cid)
                by_key[key] = cid
                corpus_ids.append(cid)
                corpus.append(make_input(text, resolved, inst, cwhere))
            ids.append(by_key[key])
        relevance.append({ids[0]: 1.0})
        lists.append(ids)
    local = task.eval_type == "local"
    return finish_task(task.name, query_ids, queries, corpus_ids, corpus, relevance, lists if local else None)
