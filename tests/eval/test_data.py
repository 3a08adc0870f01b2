"""Task configs, ``key=value`` overrides and the two data layouts, with errors that name the bad
record or file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tte_fast.eval.config import EvalConfigError, parse_config
from tte_fast.eval.data import EvalDataError, read_task
from tte_fast.settings.yaml_config import ConfigError, apply_overrides, load_config, save_config

MMEB_ROWS = [
    {
        "qry_text": "<|image_1|>\nRepresent the given image for classification",
        "qry_img_path": "a.png",
        "tgt_text": ["cat", "dog", "cat", "bird"],  # "cat" twice: one candidate
        "tgt_img_path": ["", "", "", ""],
    },
    {
        "qry_text": "Find the dog picture",
        "qry_img_path": "",
        "tgt_text": ["<|image_1|>", "<|image_1|>"],
        "tgt_img_path": ["b.png", "a.png"],
    },
    {
        "qry_text": "which is a dog",
        "qry_img_path": None,
        "tgt_text": ["dog", "cat"],
        "tgt_img_path": ["", ""],
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def images(tmp_path):
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), color).save(tmp_path / name)
    return tmp_path


def task(**overrides):
    raw = {"name": "t", "data_path": "data.jsonl", "eval_type": "local", **overrides}
    return parse_config({"tasks": [raw]}).tasks[0]


# ------------------------------------------------------------------------------------ config


def test_overrides_types_lists_and_creation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: a}\ntasks:\n  - {name: x, data_path: d}\n  - {name: y, data_path: e}\n")
    config = load_config(
        str(path),
        [
            "model.path=b",
            "tasks.1.sample_cap=10",
            "tasks.0.metrics=[hit, mrr]",
            "search.backend=faiss_flat",
            "encode.think_queries=false",
            "tasks.-1.name=z",
            "cache_dir=null",
        ],
    )
    assert config["model"]["path"] == "b"
    assert config["tasks"][1] == {"name": "z", "data_path": "e", "sample_cap": 10}
    assert config["tasks"][0]["metrics"] == ["hit", "mrr"]
    assert config["search"] == {"backend": "faiss_flat"}
    assert config["encode"]["think_queries"] is False and config["cache_dir"] is None
    save_config(config, str(tmp_path / "out" / "resolved.yaml"))
    assert load_config(str(tmp_path / "out" / "resolved.yaml")) == config


@pytest.mark.parametrize(
    "override,message",
    [
        ("noequals", "key=value"),
        ("tasks.x.name=1", "must be an integer"),
        ("tasks.5.name=1", "out of range"),
        ("model.path.deeper=1", "is a str"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"model": {"path": "a"}, "tasks": [{}]}, [override])


def test_config_validation_and_vlm2vec_mapping():
    config = parse_config(
        {
            "tasks": {
                "MSCOCO": {
                    "data_path": "m.parquet",
                    "num_sample_per_subset": 5,
                    "meta_task": "visdoc",
                    "eval_type": "global",
                    "metrics": ["recall"],
                }
            },
            "search": {"backend": "faiss_hnsw"},
        }
    )
    t = config.tasks[0]
    assert (t.name, t.sample_cap, t.modality, t.headline) == ("MSCOCO", 5, "visdoc", "ndcg_linear@5")
    assert t.metrics == ["recall", "ndcg_linear"]  # the headline is always computed
    assert task(meta_task="video").headline == "hit@1"
    with pytest.raises(EvalConfigError, match="eval_type"):
        task(eval_type="both")
    with pytest.raises(EvalConfigError, match="unknown meta_task"):
        task(meta_task="audio")
    assert task(meta_task="audio", modality="image").headline == "hit@1"
    with pytest.raises(EvalConfigError, match=r"tasks.0 \(t\): unknown keys \['sample_size'\]"):
        task(sample_size=3)
    with pytest.raises(EvalConfigError, match="search.backend"):
        parse_config({"tasks": [{"name": "a", "data_path": "b"}], "search": {"backend": "annoy"}})
    with pytest.raises(EvalConfigError, match="unique"):
        parse_config({"tasks": [{"name": "a", "data_path": "b"}, {"name": "a", "data_path": "c"}]})


# ------------------------------------------------------------------------------------- mmeb


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_mmeb_layout_local(images, fmt):
    if fmt == "jsonl":
        write_jsonl(images / "data.jsonl", MMEB_ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(MMEB_ROWS), images / "data.parquet")
    data = read_task(task(data_path=f"data.{fmt}"), str(images))
    assert data.query_ids == ["0", "1", "2"]
    assert data.queries[0] == {
        "text": "Represent the given image for classification",
        "image": str(images / "a.png"),
    }
    assert data.queries[1] == {"text": "Find the dog picture"}
    # Deduplicated corpus: cat, dog, bird, and the two images.
    assert sorted(data.corpus_ids) == sorted(["cat", "dog", "bird", "b.png", "a.png"])
    image_items = [c for c in data.corpus if "image" in c]
    assert all("text" not in c for c in image_items)  # the placeholder alone is no text
    assert data.relevance == [{"cat": 1.0}, {"b.png": 1.0}, {"dog": 1.0}]
    assert [sorted(data.corpus_ids[j] for j in c) for c in data.candidates] == [
        ["bird", "cat", "dog"],
        ["a.png", "b.png"],
        ["cat", "dog"],
    ]


def test_mmeb_corpus_order_is_blind_to_the_positive(images):
    write_jsonl(images / "data.jsonl", MMEB_ROWS)
    data = read_task(task(), str(images))
    again = read_task(task(), str(images))
    assert data.corpus_ids == again.corpus_ids  # deterministic
    # Not first-seen order (which would put each positive early).
    assert data.corpus_ids != ["cat", "dog", "bird", "b.png", "a.png"]


def test_mmeb_global_and_sample_cap(images):
    write_jsonl(images / "data.jsonl", MMEB_ROWS)
    data = read_task(task(eval_type="global", sample_cap=2), str(images))
    assert data.candidates is None and len(data.queries) == 2
    assert sorted(data.corpus_ids) == ["a.png", "b.png", "bird", "cat", "dog"]


@pytest.mark.parametrize(
    "row,message",
    [
        (
            {"qry_text": "q", "tgt_text": ["a"], "qry_img_path": "missing.png"},
            r"row 1 \(query\): image file not found",
        ),
        (
            {"qry_text": "q", "tgt_text": ["a", "b"], "tgt_img_path": [""]},
            "row 1: 2 tgt_text but 1 tgt_img_path",
        ),
        ({"qry_text": "q"}, r"row 1: missing columns \['tgt_text'\]"),
        ({"qry_text": "", "tgt_text": ["a"]}, r"row 1 \(query\): has neither text nor image"),
        ({"qry_text": "q", "tgt_text": []}, "non-empty lists"),
    ],
)
def test_mmeb_errors_name_the_row(images, row, message):
    write_jsonl(images / "data.jsonl", [MMEB_ROWS[2], row])
    with pytest.raises(EvalDataError, match=message) as err:
        read_task(task(), str(images))
    assert "data.jsonl" in str(err.value)


def test_bad_json_line_is_named(images):
    (images / "data.jsonl").write_text(json.dumps(MMEB_ROWS[2]) + "\n{oops\n")
    with pytest.raises(EvalDataError, match=r"data.jsonl:2: not valid JSON"):
        read_task(task(), str(images))


# -------------------------------------------------------------------------------------- tte


def write_tte(folder, qrels_tsv=False):
    folder.mkdir(exist_ok=True)
    write_jsonl(
        folder / "corpus.jsonl",
        [
            {"id": "d1", "text": "a red square"},
            {"id": "d2", "image": "../a.png"},
            {"id": "d3", "text": "blue", "image": "../b.png", "instruction": "Represent the document."},
        ],
    )
    write_jsonl(
        folder / "queries.jsonl",
        [
            {"id": "q1", "text": "red", "candidates": ["d1", "d2"]},
            {"id": "q2", "image": "../b.png", "candidates": ["d3", "d1", "d3"]},
        ],
    )
    qrels = [("q1", "d1", 2), ("q1", "d2", 1), ("q1", "d3", 0), ("q2", "d3", 1)]
    if qrels_tsv:
        (folder / "qrels.tsv").write_text(
            "query_id\tcorpus_id\trelevance\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in qrels)
        )
    else:
        write_jsonl(
            folder / "qrels.jsonl", [{"query_id": q, "corpus_id": d, "relevance": r} for q, d, r in qrels]
        )
    return folder


@pytest.mark.parametrize("tsv", [False, True])
def test_tte_layout(images, tsv):
    write_tte(images / "set", qrels_tsv=tsv)
    data = read_task(task(dataset_parser="tte", data_path="set"), str(images))
    assert data.query_ids == ["q1", "q2"]
    assert data.relevance == [{"d1": 2.0, "d2": 1.0, "d3": 0.0}, {"d3": 1.0}]
    by_id = dict(zip(data.corpus_ids, data.corpus))
    assert by_id["d3"] == {
        "text": "blue",
        "image": str(images / "set" / "../b.png"),
        "instruction": "Represent the document.",
    }
    assert [[data.corpus_ids[j] for j in c] for c in data.candidates] == [["d1", "d2"], ["d3", "d1"]]
    glob = read_task(task(dataset_parser="tte", data_path="set", eval_type="global"), str(images))
    assert glob.candidates is None and sorted(glob.corpus_ids) == ["d1", "d2", "d3"]


def test_tte_errors(images):
    folder = write_tte(images / "set")
    t = task(dataset_parser="tte", data_path="set")
    write_jsonl(folder / "queries.jsonl", [{"id": "q1", "text": "red", "candidates": ["d1", "nope"]}])
    with pytest.raises(
        EvalDataError, match=r"queries.jsonl: record 0: candidates not in .*corpus.jsonl: \['nope'\]"
    ):
        read_task(t, str(images))
    write_jsonl(folder / "queries.jsonl", [{"id": "q9", "text": "x", "candidates": ["d1"]}])
    with pytest.raises(EvalDataError, match="query 'q9' has no relevant corpus id"):
        read_task(t, str(images))
    write_jsonl(folder / "corpus.jsonl", [{"id": "d1", "text": "a"}, {"id": "d1", "text": "b"}])
    with pytest.raises(EvalDataError, match=r"corpus ids must be unique; repeated: \['d1'\]"):
        read_task(t, str(images))
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(EvalDataError, match="no corpus file"):
        read_task(t, str(images))
