"""Reading corpus files (no model): ids, records read back by position, and errors naming the line."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tte_fast.corpus.reader import Columns, CorpusError, open_corpus, to_input


def _jsonl(tmp_path, lines: list, name: str = "c.jsonl") -> str:
    """One JSON value a line; a None leaves a blank line."""
    path = tmp_path / name
    path.write_text("".join("\n" if x is None else json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def test_jsonl_ids_from_line_numbers_and_records_by_position(tmp_path):
    path = _jsonl(
        tmp_path, ["first", None, {"text": "second", "image": "img/a.png"}, {"image": "/abs/b.png"}]
    )
    corpus = open_corpus(path)
    assert corpus.ids == [1, 3, 4] and corpus.id_source == "line" and corpus.id_type == "int64"
    assert corpus.where(1) == f"{path}:3"
    records = corpus.records([2, 0, 1])
    assert records[0] == {"image": "/abs/b.png"}
    assert records[1] == "first"
    assert records[2] == {"text": "second", "image": os.path.join(str(tmp_path), "img/a.png")}


def test_jsonl_id_column_and_renamed_columns(tmp_path):
    lines = [{"key": "q1", "qry": "hello", "extra": 1}, {"key": "q2", "img": "x.png", "qry": "hi"}]
    columns = Columns(id="key", text="qry", image="img")
    corpus = open_corpus(_jsonl(tmp_path, lines), columns, image_root="/data")
    assert corpus.ids == ["q1", "q2"] and corpus.id_type == "string"
    # Unknown keys reach the model, which records them as the input's error.
    assert corpus.records([0, 1]) == [{"text": "hello", "extra": 1}, {"image": "/data/x.png", "text": "hi"}]


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}],
            r"c.jsonl:2: duplicate id 1 \(first at .*c.jsonl:1\)",
        ),
        (
            [{"id": 1, "text": "a"}, {"id": "2", "text": "b"}],
            r"c.jsonl:2: id '2' is a str, but earlier ids are ints",
        ),
        (
            [{"id": 1, "text": "a"}, None, {"text": "b"}],
            r"c.jsonl:3: no 'id' key, but earlier lines have one",
        ),
        (["a", {"id": 5, "text": "b"}], r"c.jsonl:1: no 'id' key, but .*c.jsonl:2 has one"),
        ([{"id": 1.5, "text": "a"}], r"c.jsonl:1: an id must be an int or a string, got float"),
        (["ok", 7], r"c.jsonl:2: expected a string or an object, got int"),
        ([None, None], r"c.jsonl: no inputs"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, lines, message):
    with pytest.raises(CorpusError, match=message):
        open_corpus(_jsonl(tmp_path, lines))


def test_invalid_json_names_its_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('"ok"\n{"text": \n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c.jsonl:2: not valid JSON"):
        open_corpus(str(path))


def test_parquet_ids_columns_and_image_structs(tmp_path):
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "text": ["one", None, "three"],
            "image": [None, {"bytes": b"PNG", "path": None}, {"bytes": None, "path": "pics/c.png"}],
            "other": [1, 2, 3],
        }
    )
    path = str(tmp_path / "c.parquet")
    pq.write_table(table, path, row_group_size=2)  # records span two row groups
    corpus = open_corpus(path)
    assert corpus.ids == ["a", "b", "c"] and corpus.where(2) == f"{path} row 2"
    assert corpus.records([2, 0, 1]) == [
        {"text": "three", "image": os.path.join(str(tmp_path), "pics/c.png")},
        {"text": "one"},
        {"image": b"PNG"},
    ]


def test_parquet_without_id_column_numbers_rows(tmp_path):
    path = str(tmp_path / "c.parquet")
    pq.write_table(pa.table({"qry": ["x", "y"]}), path)
    corpus = open_corpus(path, Columns(text="qry"))
    assert corpus.ids == [0, 1] and corpus.id_source == "row"
    assert corpus.records([1]) == [{"text": "y"}]


@pytest.mark.parametrize(
    "table, message",
    [
        ({"id": [1, None], "text": ["a", "b"]}, r"c.parquet row 1: the 'id' column is empty"),
        ({"id": [3, 3], "text": ["a", "b"]}, r"c.parquet row 1: duplicate id 3"),
        ({"id": [1], "caption": ["a"]}, r"c.parquet: has none of the 'text', 'image' and 'video' columns"),
        ({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}, r"c.parquet: no inputs"),
    ],
)
def test_parquet_errors_name_the_row(tmp_path, table, message):
    path = str(tmp_path / "c.parquet")
    pq.write_table(pa.table(table), path)
    with pytest.raises(CorpusError, match=message):
        open_corpus(path)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "c.csv").write_text("a\n")
    with pytest.raises(CorpusError, match=r"expected a .jsonl or .parquet file"):
        open_corpus(str(tmp_path / "c.csv"))
    with pytest.raises(CorpusError, match=r"no such file"):
        open_corpus(str(tmp_path / "absent.jsonl"))


def test_to_input_passes_strings_and_drops_nulls():
    assert to_input("text") == "text"
    assert to_input({"id": 3, "text": "t", "instruction": None}) == {"text": "t"}
