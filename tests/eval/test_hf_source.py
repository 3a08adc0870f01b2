"""Tasks read through the ``datasets`` library give the same task data as the files themselves; the
repository is a local folder laid out as the published one (its README declares the configs and the
image feature), so nothing is downloaded; without the library the error says what to install."""

from __future__ import annotations

import sys

import pytest

from tests.eval_layouts import write_images, write_mmeb_v2_shard, write_parquet_beir
from tte_fast.eval.config import parse_config
from tte_fast.eval.data import EvalDataError, read_task

README = """---
dataset_info:
- config_name: corpus
  features:
  - name: corpus-id
    dtype: int64
  - name: image
    dtype: image
  - name: text
    dtype: string
configs:
{configs}
---
"""


def config_entry(name: str) -> str:
    return f"- config_name: {name}\n  data_files:\n  - split: test\n    path: {name}/test-*.parquet"


@pytest.fixture
def repository(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    write_parquet_beir(str(repo))
    write_mmeb_v2_shard(str(repo))
    names = ("queries", "corpus", "qrels", "ImageNet-1K")
    (repo / "README.md").write_text(README.format(configs="\n".join(config_entry(n) for n in names)))
    write_images(tmp_path / "images")
    return repo


def task(**settings):
    return parse_config({"tasks": [{"name": "t", **settings}]}).tasks[0]


def same(a, b):
    return (a.query_ids, a.queries, a.corpus_ids, a.corpus, a.relevance, a.candidates) == (
        b.query_ids,
        b.queries,
        b.corpus_ids,
        b.corpus,
        b.relevance,
        b.candidates,
    )


def test_the_library_reads_what_the_files_hold(repository, tmp_path):
    root = str(tmp_path)
    beir = {"dataset_parser": "beir", "eval_type": "global", "language": "english"}
    from_hub = read_task(task(hf_dataset=str(repository), **beir), root)
    from_files = read_task(task(data_path="repo", **beir), root)
    assert same(from_hub, from_files) and len(from_hub.corpus) == 4
    assert isinstance(from_hub.corpus[0]["image"], bytes)  # the image feature read undecoded
    mmeb = {"eval_type": "local", "image_root": "images"}
    from_hub = read_task(task(hf_dataset=str(repository), hf_subset="ImageNet-1K", **mmeb), root)
    from_files = read_task(task(data_path="repo/ImageNet-1K", **mmeb), root)
    assert same(from_hub, from_files) and from_hub.queries[0]["instruction"]
    with pytest.raises(EvalDataError, match=r"repo\[ImageNet-1K, dev\]: cannot load"):
        read_task(
            task(hf_dataset=str(repository), hf_subset="ImageNet-1K", dataset_split="dev", **mmeb), root
        )


def test_without_the_library_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'tte_fast\[datasets\]'"):
        read_task(task(hf_dataset="some/dataset", hf_subset="x"))


def test_hf_settings_are_checked():
    with pytest.raises(ValueError, match="set either data_path or hf_dataset"):
        task(data_path="a", hf_dataset="b")
    with pytest.raises(ValueError, match="hf_dataset works with dataset_parser"):
        task(hf_dataset="b", dataset_parser="tte")
    with pytest.raises(ValueError, match="language filters beir queries"):
        task(data_path="a", language="english")
