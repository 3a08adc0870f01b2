"""``tte-fast encode`` over a corpus with videos: video cells (a frame folder, a list of frames, under a
renamed column) resolve against the corpus folder and embed as ``encode`` embeds them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from corpus_cases import sorted_table
from PIL import Image

from tte_fast.cli import main
from tte_fast.corpus import embeddings_of
from tte_fast.corpus.reader import Columns, open_corpus, to_input
from tte_fast.model import UnifiedTTE

pytestmark = pytest.mark.usefixtures("one_thread")


def write_frames(folder, count: int, seed: int) -> list[str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        names.append(f"{folder.name}/{k}.png")
    return names


def test_video_cells_resolve_against_the_corpus_folder(tmp_path):
    assert to_input({"clip": "a", "text": "t"}, Columns(video="clip"), "/media") == {
        "video": "/media/a",
        "text": "t",
    }
    assert to_input({"video": ["a/0.png", "/abs/1.png"]}, Columns(), "/m") == {
        "video": ["/m/a/0.png", "/abs/1.png"]
    }
    cell = np.array(["a/0.png", "/abs/1.png"], dtype=object)  # Ray Data's numpy batches hold lists so
    assert to_input({"video": cell}, Columns(), "/m") == {"video": ["/m/a/0.png", "/abs/1.png"]}
    path = tmp_path / "videos.parquet"
    pq.write_table(pa.table({"id": ["x"], "video": ["clips/x"]}), path)
    assert open_corpus(str(path)).records([0]) == [{"video": str(tmp_path / "clips/x")}]


def test_encode_a_corpus_with_videos(tiny_checkpoints, tmp_path, capsys):
    frames = write_frames(tmp_path / "b", 3, seed=1)
    write_frames(tmp_path / "a", 4, seed=0)
    rows = [
        {"id": "a", "clip": "a", "text": "a clip"},
        {"id": "b", "clip": frames},
        {"id": "t", "text": "text"},
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tiny_checkpoints["qwen2_vl"]
    out = tmp_path / "out"
    main(
        [
            "encode",
            "--model",
            path,
            "--inputs",
            str(corpus),
            "--output",
            str(out),
            "--no-think",
            "--video-column",
            "clip",
        ]
    )
    capsys.readouterr()
    table = sorted_table(out)
    assert table.column("id").to_pylist() == ["a", "b", "t"] and table.column("error").null_count == 3
    model = UnifiedTTE.from_pretrained(path, device="cpu")
    inputs = [
        {"video": str(tmp_path / "a"), "text": "a clip"},
        {"video": [str(tmp_path / f) for f in frames]},
        "text",
    ]
    expected = model.encode(inputs, think=False).embeddings
    torch.testing.assert_close(torch.as_tensor(embeddings_of(table)), expected, atol=1e-5, rtol=0)


def test_manifest_columns_of_older_jobs_still_match():
    """Jobs written before videos were read recorded four columns: with the default video column the
    manifest is the same, so they resume; a renamed video column is recorded."""
    assert Columns().to_dict() == {"id": "id", "text": "text", "image": "image", "instruction": "instruction"}
    assert Columns(video="clip").to_dict()["video"] == "clip"
    assert Columns(**Columns(video="clip").to_dict()) == Columns(video="clip")
