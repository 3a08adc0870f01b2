"""Two gloo processes running ``tte-fast eval`` (as torchrun would start them: RANK, WORLD_SIZE and
MASTER_* in the environment) write the same results.json as one process."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp
import yaml
from helpers import free_port, set_torchrun_env

from tests.eval_fixtures import write_dataset


def _worker(rank: int, world: int, port: int, config: str, output: str) -> None:
    import torch

    torch.set_num_threads(1)
    set_torchrun_env(rank, world, port)
    from tte_fast.eval.cli import main

    main([config, f"output_dir={output}", "--quiet"])


def test_two_processes_give_the_same_json_as_one(tiny_checkpoints, tmp_path, one_thread):
    """The single process runs with one thread as the workers do: a matmul's rounding may depend on it."""
    raw = write_dataset(str(tmp_path))
    raw["model"] = {"path": tiny_checkpoints["qwen2_vl"], "device": "cpu"}
    # One input per batch: each input's numbers then do not depend on which inputs share its batch,
    # so the comparison is exact and tests the sharding and gathering alone.
    raw["encode"]["batch_size"] = 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))

    ctx = mp.get_context("spawn")
    port = free_port()
    two = [
        ctx.Process(target=_worker, args=(r, 2, port, str(config), str(tmp_path / "two"))) for r in range(2)
    ]
    for p in two:
        p.start()
    from tte_fast.eval.cli import main  # the single process: this one, while the others start

    main([str(config), f"output_dir={tmp_path / 'one'}", "--quiet"])
    for p in two:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
            pytest.fail("an evaluation process hung")
        assert p.exitcode == 0
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    assert double == single
    assert single["tasks"]["mmeb_local"]["encode"]["query"]["thought"] == 3
    for name in ("mmeb_local", "ours_global"):
        a = (tmp_path / "one" / "predictions" / f"{name}.jsonl").read_text()
        assert (tmp_path / "two" / "predictions" / f"{name}.jsonl").read_text() == a
