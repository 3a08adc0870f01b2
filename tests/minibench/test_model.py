"""The unified model the package ships (the demo's default): small, loads like any checkpoint,
thinks in the benchmark's words and retrieves clearly better than chance on test queries."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch

from tte_fast.demo import PACKAGED_MODEL

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(PACKAGED_MODEL, "config.json")), reason="no packaged model"
)


def test_packaged_model_is_small_and_loads_with_its_head():
    from tte_fast import UnifiedTTE

    files = [os.path.join(d, f) for d, _, names in os.walk(PACKAGED_MODEL) for f in names]
    assert sum(os.path.getsize(f) for f in files) <= 20e6  # the baseline beside it included
    model = UnifiedTTE.from_pretrained(PACKAGED_MODEL, device="cpu", dtype=torch.float32)
    assert model.head is not None and model.embed_token == "<emb>"
    assert model.hf_model.config.model_type == "qwen3_vl"


def test_packaged_model_beats_chance_on_test_queries(tmp_path):
    from tte_fast.minibench.pipeline import CONFIG_DIR, eval_variant
    from tte_fast.minibench.writer import generate

    generate(str(tmp_path / "data"), seed=0, size="fast")  # the first 100 test queries of each task
    os.makedirs(tmp_path / "configs")
    shutil.copyfile(os.path.join(CONFIG_DIR, "eval.yaml"), tmp_path / "configs" / "eval.yaml")
    shutil.copytree(PACKAGED_MODEL, tmp_path / "runs" / "head" / "final")
    results = eval_variant(str(tmp_path), "TTE_u", ["encode.batch_size=40"])["results"]
    chance = sum(t["chance"] for t in results["tasks"].values()) / len(results["tasks"])
    assert results["overall"]["headline"] > chance + 0.1
    for task in results["tasks"].values():  # every distinct query was thought about, none embedded bare
        assert task["encode"]["query"]["thought"] >= 20 and task["encode"]["query"]["embedded"] == 0


def test_demo_prints_traces_and_verdicts(capsys):
    from tte_fast.demo import run

    hits = run(None, None, "cpu", per_task=1)
    out = capsys.readouterr().out
    assert out.count("student: <think>") == 4 and out.count("teacher: from left to right") == 3
    assert out.count("thinking:") == 4 and out.count("baseline:") == 4  # the baseline ships beside
    assert f"{hits} of 4 queries retrieved their answer with thinking, " in out
    assert re.search(r"[0-4] of 4 with the baseline$", out.strip())
