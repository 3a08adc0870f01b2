"""``tte-fast encode`` into a folder: kill and resume, refusing a different setting, bad inputs kept."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_cases import THINK, assert_same_table, encode_args, mixed_items, sorted_table, write_corpus
from PIL import Image

from tte_fast.cli import main
from tte_fast.corpus import CorpusJobError, EncodeSettings, embeddings_of, encode_corpus, model_description
from tte_fast.corpus.reader import Columns, open_corpus
from tte_fast.corpus.store import MANIFEST
from tte_fast.model import UnifiedTTE
from tte_fast.testing import build_tiny_checkpoint
from tte_fast.two_model import TwoModelTTE

pytestmark = pytest.mark.usefixtures("one_thread")

# Runs ``tte-fast encode`` and SIGKILLs itself while the third shard is written: after its temporary
# file is complete, before the rename that puts it in place.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from tte_fast.corpus import store as corpus_store
    from tte_fast.cli import main
    renames, replace = [], os.replace
    def dying_replace(src, dst):
        if os.path.basename(dst).startswith("part-"):
            renames.append(dst)
            if len(renames) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)
    corpus_store.os.replace = dying_replace
    main(sys.argv[1:])
    """
)


@pytest.fixture(scope="module")
def model_path(tiny_checkpoints):
    return tiny_checkpoints["qwen2_vl"]


@pytest.fixture(scope="module")
def tte(model_path):
    return UnifiedTTE.from_pretrained(model_path, device="cpu")


def _run(capsys, *args) -> dict:
    """One in-process ``tte-fast encode``; its JSON summary (the last stdout line)."""
    capsys.readouterr()
    main(list(args))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _encode(tte, corpus: str, out: str, shard_size: int = 2, resume: bool = False, **settings) -> dict:
    """The job through the Python API, on the already loaded model (the settings the CLI's are)."""
    settings = {"max_think_tokens": int(THINK), **settings}
    return encode_corpus(
        tte,
        open_corpus(corpus, settings.pop("columns", Columns())),
        out,
        EncodeSettings(**settings),
        shard_size=shard_size,
        resume=resume,
        progress=False,
    )


def test_killed_run_resumes_to_the_uninterrupted_table(model_path, tte, tmp_path):
    items = mixed_items(9) + [{"id": "doc-missing", "image": "nowhere.png"}]
    corpus = write_corpus(tmp_path, items)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    summary = _encode(tte, corpus, full)
    assert (summary["encoded"], summary["failed"], summary["shards_written"]) == (10, 1, 5)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-c",
        KILLED_RUN,
        *encode_args(model_path, corpus, killed, "--shard-size", "2"),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(os.listdir(killed))
    assert sum(n.startswith("part-") for n in names) == 2
    assert any(n.startswith(".part-") for n in names), names  # the third shard's temporary file
    assert sorted_table(killed).num_rows == 4  # the temporary file is not part of the table

    summary = _encode(tte, corpus, killed, resume=True)
    assert (summary["already_done"], summary["encoded"], summary["table"]["rows"]) == (4, 6, 10)
    assert not any(n.startswith(".") for n in os.listdir(killed))
    assert_same_table(sorted_table(killed), sorted_table(full))

    again = _encode(tte, corpus, killed, resume=True)
    assert (again["already_done"], again["encoded"]) == (10, 0)
    assert_same_table(sorted_table(killed), sorted_table(full))
    manifest = json.loads((tmp_path / "killed" / MANIFEST).read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"rows": 10, "succeeded": 9, "failed": 1, "shards": 5}


@pytest.fixture(scope="module")
def finished(tte, tmp_path_factory):
    """A finished encoding of four inputs (and its corpus)."""
    folder = tmp_path_factory.mktemp("finished")
    corpus = write_corpus(folder, mixed_items(4))
    _encode(tte, corpus, str(folder / "out"), shard_size=3)
    return corpus, str(folder / "out")


@pytest.mark.parametrize(
    "change, named",
    [
        ({"max_think_tokens": 3}, "settings.decode.max_think_tokens: 2 (in the folder) vs 3 (now)"),
        ({"think": False}, "settings.think: true (in the folder) vs false (now)"),
        ({"side": "target"}, "settings.side"),
        ({"do_sample": True, "seed": 1}, "settings.decode.do_sample"),
        ({"embedding_dtype": "float16"}, "schema.embedding_dtype"),
        ({"columns": Columns(text="caption")}, "settings.columns.text"),
    ],
)
def test_resume_refuses_a_different_setting(tte, finished, change, named):
    corpus, out = finished
    before = sorted(os.listdir(out))
    with pytest.raises(CorpusJobError, match="refusing to resume") as err:
        _encode(tte, corpus, out, resume=True, **change)
    assert named in str(err.value)
    assert sorted(os.listdir(out)) == before


def test_resume_refuses_a_different_model(finished, tmp_path):
    """Other weights of the same architecture: the CLI exits naming the fingerprint."""
    corpus, out = finished
    other = build_tiny_checkpoint("qwen2_vl", str(tmp_path / "other"), seed=1)
    with pytest.raises(SystemExit, match=r"refusing to resume (.|\n)*model.fingerprint"):
        main(encode_args(other, corpus, out, "--resume"))


def test_a_used_folder_needs_resume(tte, finished):
    corpus, out = finished
    with pytest.raises(CorpusJobError, match="already holds an encoding: pass --resume"):
        _encode(tte, corpus, out)


def test_bad_inputs_are_recorded_and_the_job_goes_on(model_path, tte, tmp_path, capsys):
    good = [{"id": "ok-1", "text": "a red car"}, {"id": "ok-2", "text": "a cat", "image": "cat.png"}]
    bad = [
        ({"id": "missing", "image": "nowhere.png"}, "image file not found"),
        ({"id": "corrupt", "image": "broken.png"}, "cannot read image"),
        ({"id": "long", "text": "a " * 5000}, "exceeds the model's context of 4096 tokens"),
        ({"id": "typo", "txt": "hello"}, "unknown keys ['txt']"),
        ({"id": "empty", "text": "  "}, "needs a non-empty 'text' or an 'image'"),
    ]
    corpus = write_corpus(tmp_path, [good[0], *[b for b, _ in bad], good[1]])
    out = str(tmp_path / "out")
    summary = _run(capsys, *encode_args(model_path, corpus, out, "--batch-size", "1", "--shard-size", "4"))
    assert (summary["succeeded"], summary["failed"]) == (2, 5)
    assert {f["id"]: f["where"].rsplit(":", 1)[1] for f in summary["failures"]}["long"] == "4"

    table = sorted_table(out)
    rows = {r["id"]: r for r in table.to_pylist()}
    for item, message in bad:
        row = rows[item["id"]]
        assert message in row["error"] and row["embedding"] is None and row["trace"] is None
    expected = tte.encode(
        [
            {k: v for k, v in g.items() if k != "id"}
            | ({"image": str(tmp_path / "cat.png")} if "image" in g else {})
            for g in good
        ],
        max_think_tokens=int(THINK),
        batch_size=1,
    )
    got = embeddings_of(table.filter(pa.compute.is_in(table.column("id"), pa.array(["ok-1", "ok-2"]))))
    np.testing.assert_allclose(got, expected.embeddings.numpy(), atol=1e-6, rtol=0)
    assert [rows[g["id"]]["trace"] for g in good] == expected.traces
    assert all(rows[g["id"]]["error"] is None for g in good)


def test_parquet_corpus_with_string_ids_in_float16(model_path, tte, tmp_path, capsys):
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(image, "PNG")
    source = pa.table(
        {
            "key": ["b", "a", "c"],
            "caption": ["a photo", "two dogs", None],
            "picture": [None, None, {"bytes": image.getvalue(), "path": None}],
        }
    )
    inputs = str(tmp_path / "corpus.parquet")
    pq.write_table(source, inputs)
    out = str(tmp_path / "out")
    flags = ["--id-column", "key", "--text-column", "caption", "--image-column", "picture", "--no-think"]
    _run(capsys, *encode_args(model_path, inputs, out, "--embedding-dtype", "float16", *flags))

    table = sorted_table(out)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("embedding").type.value_type == pa.float16()
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.column("trace").to_pylist() == [None, None, None]
    expected = tte.encode(["two dogs", "a photo", {"image": image.getvalue()}], think=False)
    got = embeddings_of(table)
    np.testing.assert_allclose(got, expected.embeddings.numpy(), atol=2e-3, rtol=0)  # float16 rounding

    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["model"]["fingerprint"] == model_description(tte)["fingerprint"]
    assert manifest["settings"]["think"] is False and manifest["settings"]["decode"] is None
    assert manifest["source"]["ids"] == "column" and manifest["counts"]["rows"] == 3


def test_two_model_tte_through_the_cli(model_path, tte, tmp_path, capsys):
    """``--reasoner`` loads a TwoModelTTE: its reasoner thinks, its embedder embeds query + trace."""
    corpus = write_corpus(tmp_path, mixed_items(3))
    out = str(tmp_path / "out")
    _run(capsys, *encode_args(model_path, corpus, out, "--reasoner", model_path))
    two = TwoModelTTE(tte, tte)
    inputs = [r for r in open_corpus(corpus).records([0, 1, 2])]
    expected = two.encode(inputs, max_think_tokens=int(THINK))
    table = sorted_table(out)
    np.testing.assert_allclose(embeddings_of(table), expected.embeddings.numpy(), atol=1e-5, rtol=0)
    assert table.column("trace").to_pylist() == expected.traces
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["model"]["kind"] == "TwoModelTTE" and "reasoner_tte_config" in manifest["settings"]
