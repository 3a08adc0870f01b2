"""Two gloo processes (as torchrun starts them) share one trace job: each writes its own shards into
one folder, which reads as the one-process folder."""

from __future__ import annotations

import json
import os
import re

import pyarrow.parquet as pq
import pytest
from helpers import run_torchrun_script
from traces_cases import sorted_rows, traces_config, write_config, write_pairs

from tte_fast.corpus.store import MANIFEST
from tte_fast.model import UnifiedTTE
from tte_fast.traces import EngineReasoner, generate_traces
from tte_fast.traces.config import parse_traces_config
from tte_fast.traces.sources import read_inputs

SCRIPT = "import sys; from tte_fast.cli import main; main(['traces', sys.argv[1], '--quiet'])"


@pytest.mark.usefixtures("one_thread")
def test_two_processes_write_disjoint_shards_that_make_the_whole_folder(tiny_checkpoints, tmp_path):
    model_path = tiny_checkpoints["qwen2_vl"]
    data = write_pairs(tmp_path, 4)  # 6 records: 6 queries, 6 positives
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    raw = traces_config(tmp_path, model_path, data, two, shard_size=2)
    run_torchrun_script(SCRIPT, write_config(tmp_path, raw))

    config = parse_traces_config(traces_config(tmp_path, model_path, data, one, shard_size=2), str(tmp_path))
    reasoner = EngineReasoner(UnifiedTTE.from_pretrained(model_path, device="cpu"), config.decode_params())
    generate_traces(reasoner, read_inputs(config), one, sides=config.sides, shard_size=2, progress=False)

    # Shard j of the inputs went to process j % 2; each wrote only its own.
    starts: dict[int, list[int]] = {0: [], 1: []}
    for name in os.listdir(two):
        match = re.fullmatch(r"part-(\d{10})-(\d{3})[0-9a-f]+\.parquet", name)
        if match:
            starts[int(match.group(2))].append(int(match.group(1)))
            assert pq.read_metadata(os.path.join(two, name)).num_rows == 2
    assert sorted(starts[0]) == [0, 4, 8] and sorted(starts[1]) == [2, 6, 10]
    assert sorted_rows(two) == sorted_rows(one)
    manifest = json.loads((tmp_path / "two" / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "complete"
    assert manifest["last_run"]["generated"] == 12 and manifest["last_run"]["failed"] == 2
