"""The MMEB-V2 readers on small data in each published layout: instructed MMEB rows (``qry_inst`` and
``tgt_inst`` become instructions) and BEIR visual-document tasks (parquet shards with image bytes,
JSONL with paths and a TSV of graded qrels), with errors that name the offending value."""

from __future__ import annotations

import os

import pytest
import torch

from tests.eval_layouts import (
    CLASSIFY,
    FIND_IMAGE,
    LABEL,
    MMEB_V2_ROWS,
    REPRESENT_IMAGE,
    corpus_id,
    png_bytes,
    write_images,
    write_jsonl,
    write_jsonl_beir,
    write_mmeb_v2_shard,
    write_parquet_beir,
)
from tte_fast.eval.config import SearchConfig, parse_config
from tte_fast.eval.data import EvalDataError, read_task
from tte_fast.eval.scoring import score_task


def task(**settings):
    raw = {"name": "t", "eval_type": "local", **settings}
    return parse_config({"tasks": [raw]}).tasks[0]


# ------------------------------------------------------------------------------ mmeb, V2 rows


def test_v2_instructions_become_the_inputs_instructions(tmp_path):
    write_images(tmp_path)
    write_mmeb_v2_shard(str(tmp_path))  # a folder of shards, as the dataset repository holds it
    t = task(
        data_path="ImageNet-1K",
        image_root=".",
        query_instruction="Task query.",
        target_instruction="Task target.",
    )
    data = read_task(t, str(tmp_path))
    a, b = os.path.join(tmp_path, ".", "a.png"), os.path.join(tmp_path, ".", "b.png")
    assert data.queries == [
        {"image": a, "instruction": CLASSIFY},  # the placeholder is dropped, the text is empty
        {"text": "a blue square", "instruction": FIND_IMAGE},
        {"text": "which is a dog", "instruction": "Task query."},  # no qry_inst: the task's
    ]
    by_id = dict(zip(data.corpus_ids, data.corpus))
    assert by_id["cat"] == {"text": "cat", "instruction": LABEL}
    assert by_id["b.png"] == {"image": b, "instruction": REPRESENT_IMAGE}
    # "dog" under row 0's tgt_inst and under the task's instruction are two different inputs.
    dogs = sorted((c for c in data.corpus if c.get("text") == "dog"), key=lambda c: c["instruction"])
    assert dogs == [{"text": "dog", "instruction": LABEL}, {"text": "dog", "instruction": "Task target."}]
    assert len(data.corpus) == 7
    positives = [next(iter(r)) for r in data.relevance]
    assert [by_id[p].get("text", by_id[p].get("image")) for p in positives] == ["cat", b, "dog"]
    assert by_id[positives[2]]["instruction"] == "Task target."


def test_tgt_inst_may_be_given_per_candidate(tmp_path):
    row = {**MMEB_V2_ROWS[2], "tgt_inst": ["Label A:", "Label B:"]}
    write_jsonl(tmp_path / "rows.jsonl", [row])
    data = read_task(task(data_path="rows.jsonl"), str(tmp_path))
    assert sorted(c["instruction"] for c in data.corpus) == ["Label A:", "Label B:"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"tgt_inst": ["only one"]}, "row 0: 2 tgt_text but 1 tgt_inst"),
        ({"qry_inst": ["a list"]}, r"row 0 \(query\): qry_inst must be a string, got list: \['a list'\]"),
        ({"tgt_inst": 7}, "row 0: tgt_inst must be a string, got int: 7"),
        ({"tgt_text": ["dog", 3]}, r"row 0 \(candidate 1\): tgt_text must be a string, got int"),
    ],
)
def test_bad_v2_rows_are_named(tmp_path, change, message):
    write_jsonl(tmp_path / "rows.jsonl", [{**MMEB_V2_ROWS[2], **change}])
    with pytest.raises(EvalDataError, match=message):
        read_task(task(data_path="rows.jsonl"), str(tmp_path))


def test_a_folder_with_several_splits_needs_dataset_split(tmp_path):
    write_images(tmp_path)
    path = write_mmeb_v2_shard(str(tmp_path))
    os.link(path, os.path.join(os.path.dirname(path), "train-00000-of-00001.parquet"))
    with pytest.raises(EvalDataError, match=r"several splits \['test', 'train'\]; set dataset_split"):
        read_task(task(data_path="ImageNet-1K", image_root="."), str(tmp_path))
    assert (
        len(
            read_task(
                task(data_path="ImageNet-1K", image_root=".", dataset_split="test"), str(tmp_path)
            ).queries
        )
        == 3
    )
    with pytest.raises(EvalDataError, match="no split 'dev' files"):
        read_task(task(data_path="ImageNet-1K", image_root=".", dataset_split="dev"), str(tmp_path))


# ------------------------------------------------------------------------------------- beir


def beir_task(**settings):
    return task(dataset_parser="beir", eval_type="global", **settings)


@pytest.mark.parametrize("split", ["test", "train"])  # ViDoRe's *_beir; VisRAG-Ret-Test
def test_beir_parquet_repository(tmp_path, split):
    write_parquet_beir(str(tmp_path / "set"), split)
    data = read_task(beir_task(data_path="set", target_instruction="Doc."), str(tmp_path))
    cid = [str(corpus_id(c, split)) for c in (10, 11, 12, 13)]
    assert data.query_ids == ["1", "2", "3"]
    # Grades as judged; the 0 is no judgment; a pair judged twice keeps the higher grade.
    assert data.relevance == [{cid[0]: 2.0, cid[1]: 1.0}, {cid[2]: 2.0}, {cid[2]: 1.0}]
    assert data.candidates is None and sorted(data.corpus_ids) == sorted(cid)
    by_id = dict(zip(data.corpus_ids, data.corpus))
    assert by_id[cid[3]] == {"image": png_bytes(13), "instruction": "Doc."}  # the cell's bytes
    assert data.queries[0] == {"text": "revenue by year"}
    english = read_task(beir_task(data_path="set", language="english", sample_cap=1), str(tmp_path))
    assert english.query_ids == ["1"]
    french = read_task(beir_task(data_path="set", language="french"), str(tmp_path))
    assert french.query_ids == ["3"] and french.relevance == [{cid[2]: 1.0}]
    with pytest.raises(
        EvalDataError, match=r"no query has language 'german' \(found: \['english', 'french'\]\)"
    ):
        read_task(beir_task(data_path="set", language="german"), str(tmp_path))


def test_beir_jsonl_and_tsv(tmp_path):
    write_jsonl_beir(str(tmp_path / "set"))
    data = read_task(beir_task(data_path="set", image_root="set/images"), str(tmp_path))
    assert data.query_ids == ["1", "2"]
    assert data.relevance == [{"10": 2.0, "11": 1.0}, {"12": 2.0}]
    by_id = dict(zip(data.corpus_ids, data.corpus))
    assert by_id["11"] == {"image": str(tmp_path / "set" / "images" / "11.png")}


def test_beir_ranks_by_graded_ndcg_at_5(tmp_path):
    """q1's grades: 10 -> 2, 11 -> 1. Ranked 11, 13, 10: DCG = 1 + 2 / log2(4) = 2, ideal 2 + 1 /
    log2(3); q2 finds its one page first: 1."""
    write_parquet_beir(str(tmp_path / "set"))
    t = beir_task(data_path="set", language="english")
    data = read_task(t, str(tmp_path))
    corpus = torch.eye(4)[[("10", "11", "12", "13").index(c) for c in data.corpus_ids]]
    q1 = torch.nn.functional.normalize(torch.tensor([1.0, 3.0, 0.0, 2.0]), dim=0)
    queries = torch.stack([q1, torch.tensor([0.0, 0.0, 1.0, 0.0])])
    scored = score_task(t, data, queries, corpus, SearchConfig())
    expected_q1 = 2.0 / (2.0 + 1.0 / torch.log2(torch.tensor(3.0)).item())
    assert scored.predictions[0]["ranked"][:3] == ["11", "13", "10"]
    assert scored.summary["headline_metric"] == "ndcg_linear@5"
    assert scored.summary["headline"] == pytest.approx((expected_q1 + 1.0) / 2)


def test_beir_errors_name_the_value(tmp_path):
    folder = tmp_path / "set"
    write_jsonl_beir(str(folder))
    t = beir_task(data_path="set", image_root="set/images")
    with pytest.raises(EvalDataError, match="BEIR tasks rank the whole corpus: set eval_type: global"):
        read_task(task(dataset_parser="beir", data_path="set"), str(tmp_path))
    write_jsonl(folder / "queries.jsonl", [{"query-id": "9", "query": "x"}])
    with pytest.raises(EvalDataError, match="query '9' has no relevant corpus-id"):
        read_task(t, str(tmp_path))
    write_jsonl(folder / "queries.jsonl", [{"id": "1", "query": "x"}])
    with pytest.raises(
        EvalDataError, match=r"queries.jsonl: record 0: no query-id \(columns: \['id', 'query'\]\)"
    ):
        read_task(t, str(tmp_path))
    write_jsonl(folder / "queries.jsonl", [{"query-id": "1", "text": "x"}])
    with pytest.raises(EvalDataError, match="record 0: query '1' has no query text"):
        read_task(t, str(tmp_path))
    write_jsonl(folder / "queries.jsonl", [{"query-id": "1", "query": "x"}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t10\thigh\n")
    with pytest.raises(EvalDataError, match="test.tsv: record 0: score must be a number, got 'high'"):
        read_task(t, str(tmp_path))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t99\t1\n")
    with pytest.raises(EvalDataError, match=r"query '1' judges corpus ids not in .*corpus.jsonl: \['99'\]"):
        read_task(t, str(tmp_path))
    write_jsonl(folder / "corpus.jsonl", [{"corpus-id": "10", "image": "10.png"}, {"corpus-id": "10"}])
    with pytest.raises(EvalDataError, match=r"corpus.jsonl: record 1: image file|no image"):
        read_task(t, str(tmp_path))
    write_jsonl(folder / "corpus.jsonl", [{"corpus-id": "10", "image": "10.png"}] * 2)
    with pytest.raises(EvalDataError, match=r"corpus-id must be unique; repeated: \['10'\]"):
        read_task(t, str(tmp_path))


def test_beir_errors_give_the_files_record_number_after_filtering():
    from tte_fast.eval.beir import read_beir

    tables = {
        "queries": [{"query-id": "1", "query": "a", "language": "english"}, {"query-id": "9", "query": "b"}],
        "corpus": [{"corpus-id": "10", "image": {"bytes": png_bytes(0), "path": None}}],
        "qrels": [{"query-id": "1", "corpus-id": "10", "score": 1}],
    }
    sources = {name: name for name in tables}
    with pytest.raises(EvalDataError, match="queries: record 1: query '9' has no relevant"):
        read_beir(beir_task(data_path="-", language=None), tables, sources, ".")
    tables["queries"][1]["language"] = "french"
    with pytest.raises(EvalDataError, match="queries: record 1: query '9' has no relevant"):
        read_beir(beir_task(data_path="-", language="french"), tables, sources, ".")
