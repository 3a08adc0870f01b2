"""Two gloo processes (started as torchrun would: RANK, WORLD_SIZE and MASTER_* in the environment)
each encode their share of a corpus into one folder; read as one table, it is the one-process table."""

from __future__ import annotations

import json
import os
import re

import pyarrow.parquet as pq
import pytest
import torch.multiprocessing as mp
from corpus_cases import assert_same_table, encode_args, mixed_items, sorted_table, write_corpus
from helpers import free_port, set_torchrun_env

from tte_fast.corpus import EncodeSettings, encode_corpus
from tte_fast.corpus.reader import open_corpus
from tte_fast.corpus.store import MANIFEST
from tte_fast.model import UnifiedTTE

SHARD = 2
N = 9


def _worker(rank: int, world: int, port: int, args: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    set_torchrun_env(rank, world, port)
    from tte_fast.cli import main

    main(args)


@pytest.mark.usefixtures("one_thread")
def test_two_processes_write_disjoint_shards_that_make_the_whole_table(tiny_checkpoints, tmp_path):
    model_path = tiny_checkpoints["qwen2_vl"]
    corpus = write_corpus(tmp_path, mixed_items(N))
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    args = encode_args(model_path, corpus, two, "--shard-size", str(SHARD))
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, args)) for r in range(2)]
    for p in procs:
        p.start()
    # The single process: this one, while the others start.
    model = UnifiedTTE.from_pretrained(model_path, device="cpu")
    encode_corpus(model, open_corpus(corpus), one, EncodeSettings(max_think_tokens=2), shard_size=SHARD)
    for p in procs:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
            pytest.fail("an encoding process hung")
        assert p.exitcode == 0

    # Shard j of the corpus went to process j % 2; each wrote only its own.
    written = {0: [], 1: []}
    for name in os.listdir(two):
        match = re.fullmatch(r"part-(\d{10})-(\d{3})[0-9a-f]+\.parquet", name)
        if match:
            ids = pq.read_table(os.path.join(two, name), columns=["id"]).column(0).to_pylist()
            written[int(match.group(2))].append((int(match.group(1)), ids))
    for rank, shards in written.items():
        starts = sorted(start for start, _ in shards)
        assert starts == list(range(rank * SHARD, N, 2 * SHARD))
        for start, ids in shards:
            assert ids == [f"doc-{i:03d}" for i in range(start, min(start + SHARD, N))]

    assert_same_table(sorted_table(two), sorted_table(one))  # no merge step: pyarrow.dataset reads it
    manifest = json.loads((tmp_path / "two" / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "complete"
    assert manifest["last_run"]["encoded"] == N and manifest["last_run"]["shards_written"] == 5
