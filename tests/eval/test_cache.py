"""Evaluation caches on a tiny Qwen2-VL: an unchanged re-run encodes nothing; a changed weight,
prompt, think or answer budget re-encodes exactly what depends on it; a changed embedder over the same
reasoner reuses the cached traces; embeddings from cached traces equal those made while thinking."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from tests.eval_fixtures import THINK_TOKENS, Counting, write_dataset
from tte_fast.eval import evaluate, parse_config
from tte_fast.model import UnifiedTTE
from tte_fast.two_model import TwoModelTTE

N_QUERIES = 3 + 2  # both tasks
N_TARGETS = 5 + 4


@pytest.fixture(scope="module")
def model(tiny_checkpoints, one_thread):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


@pytest.fixture
def setup(tmp_path):
    raw = write_dataset(str(tmp_path / "data"))
    raw["output_dir"] = str(tmp_path / "out")

    def run(model, **encode):
        data = copy.deepcopy(raw)
        data["encode"].update(encode)
        return evaluate(parse_config(data, base_dir=str(tmp_path / "data")), model=model, verbose=False)

    return run, tmp_path


def served(results, side):
    total = {"cached": 0, "reused_traces": 0, "thought": 0, "embedded": 0}
    for t in results["tasks"].values():
        for k, v in t["encode"][side].items():
            total[k] += v
    return total


def test_unchanged_rerun_encodes_nothing(model, setup):
    run, tmp = setup
    first = run(model)
    assert served(first, "query") == {"cached": 0, "reused_traces": 0, "thought": N_QUERIES, "embedded": 0}
    assert served(first, "target") == {"cached": 0, "reused_traces": 0, "thought": 0, "embedded": N_TARGETS}
    counter = Counting().wrap(model, "encode", "encode").wrap(model, "think", "think")
    try:
        second = run(model)
    finally:
        del model.encode, model.think  # drop the instance attributes: back to the class methods
    assert counter.total() == 0
    assert served(second, "query")["cached"] == N_QUERIES and served(second, "target")["cached"] == N_TARGETS
    assert {n: t["metrics"] for n, t in second["tasks"].items()} == {
        n: t["metrics"] for n, t in first["tasks"].items()
    }
    out = tmp / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"].keys() == {"mmeb_local", "ours_global"}
    assert saved["tasks"]["ours_global"]["headline_metric"] == "ndcg_linear@5"
    lines = (out / "predictions" / "ours_global.jsonl").read_text().splitlines()
    assert [json.loads(x)["query_id"] for x in lines] == ["qa", "qb"]
    assert len(json.loads(lines[0])["ranked"]) == 4


def test_settings_invalidate_exactly_what_depends_on_them(model, setup):
    run, _ = setup
    run(model)
    budget = run(model, max_think_tokens=4)  # traces change: queries again, targets cached
    assert served(budget, "query")["thought"] == N_QUERIES
    assert served(budget, "target")["cached"] == N_TARGETS
    answer = run(model, max_answer_tokens=model.config.max_answer_tokens + 1)  # traces depend on it too
    assert served(answer, "query")["thought"] == N_QUERIES
    assert served(answer, "target")["cached"] == N_TARGETS

    prompts = model.config.prompts
    original = prompts.query_instruction
    prompts.query_instruction = "Represent the query, differently."
    try:
        changed = run(model)
    finally:
        prompts.query_instruction = original
    assert served(changed, "query")["thought"] == N_QUERIES

    model.config.stop_strings = ["a stop string"]  # they end traces: queries again
    try:
        stopped = run(model)
    finally:
        model.config.stop_strings = []
    assert served(stopped, "query")["thought"] == N_QUERIES

    weight = next(model.hf_model.parameters())
    with torch.no_grad():
        weight.view(-1)[7] += 1e-3  # one value
        try:
            moved = run(model)
        finally:
            weight.view(-1)[7] -= 1e-3
    assert served(moved, "query")["thought"] == N_QUERIES and served(moved, "target")["embedded"] == N_TARGETS

    back = run(model)  # the original setting's files are still there
    assert served(back, "query")["cached"] == N_QUERIES and served(back, "target")["cached"] == N_TARGETS


def test_cached_traces_are_the_models_and_embed_as_given_traces(model, setup):
    """With the embeddings gone, queries are embedded from their cached traces (the model's own
    greedy traces, stored under each input's key), exactly as ``encode(traces=...)`` does."""
    from tte_fast.eval.cache import EmbeddingCache, TraceCache
    from tte_fast.eval.data import read_task
    from tte_fast.eval.encoder import ModelRunner
    from tte_fast.eval.fingerprint import input_fingerprint

    run, tmp = setup
    run(model)
    cache = tmp / "out" / "cache"
    for task in os.listdir(cache):
        for name in os.listdir(cache / task):
            if "-emb-" in name:
                os.remove(cache / task / name)
    again = run(model)
    assert served(again, "query")["reused_traces"] == N_QUERIES

    config = parse_config(write_dataset(str(tmp / "data")), base_dir=str(tmp / "data"))
    runner = ModelRunner(model, config.encode, str(cache))
    for task in config.tasks:
        queries = read_task(task, config.base_dir).queries
        keys = [input_fingerprint(q) for q in queries]
        stored = TraceCache(str(cache), task.name, "query", runner.trace_fingerprint("query")).load()
        traces = [stored[k] for k in keys]
        assert traces == model.think(queries, max_think_tokens=THINK_TOKENS, batch_size=4)
        rows = EmbeddingCache(str(cache), task.name, "query", runner.embed_fingerprint("query")).load()
        expected = model.encode(queries, traces=traces, batch_size=4).embeddings
        torch.testing.assert_close(torch.stack([rows[k] for k in keys]), expected, atol=1e-5, rtol=0)


def test_new_embedder_reuses_the_reasoners_traces(model, tiny_checkpoints, setup):
    run, _ = setup
    embedder = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
    run(TwoModelTTE(model, embedder))
    weight = next(embedder.hf_model.parameters())
    counter = Counting().wrap(model, "think", "think").wrap(model, "encode", "encode")
    try:
        with torch.no_grad():
            weight.view(-1)[3] += 1e-2  # a different embedder, the same reasoner
        results = run(TwoModelTTE(model, embedder))
    finally:
        del model.encode, model.think
    assert counter.calls == {}
    assert served(results, "query") == {"cached": 0, "reused_traces": N_QUERIES, "thought": 0, "embedded": 0}
    assert served(results, "target")["embedded"] == N_TARGETS
    assert results["model"]["reasoner_weights"] != results["model"]["embedder_weights"]


def test_cache_off_and_cli(tiny_checkpoints, tmp_path, capsys):
    """The CLI on the shipped example: outputs written, the random model flagged."""
    from tte_fast.cli import main

    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eval")
    config = tmp_path / "config.yaml"
    shutil.copy(os.path.join(example, "config.yaml"), config)
    for name in ("colors_i2t.jsonl", "colors_t2i.jsonl", "colors_tte", "images"):
        src = os.path.join(example, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, tmp_path / name)
    out = tmp_path / "out"
    main(
        [
            "eval",
            str(config),
            f"model.path={tiny_checkpoints['qwen2_vl']}",
            f"output_dir={out}",
            "encode.max_think_tokens=2",
            "tasks.2.sample_cap=3",
            "cache=false",
        ]
    )
    printed = capsys.readouterr().out
    assert "colors_graded" in printed and "overall:" in printed and "WARNING" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["colors_graded"]["num_queries"] == 3
    assert not (out / "cache").exists()
    assert (out / "config.yaml").read_text().count("sample_cap: 3") == 1
    with pytest.raises(SystemExit, match="unknown top-level keys"):
        main(["eval", str(config), "outptu_dir=x"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_weight_digests_see_any_single_change(dtype):
    from tte_fast.eval.fingerprint import tensor_checksum, tensor_digest

    t = (torch.arange(3000) % 7).to(dtype)
    base = (tensor_digest(t), tensor_checksum(t))
    for i in (0, 1234, 2999):
        changed = t.clone()
        changed[i] = ~changed[i] if dtype == torch.bool else changed[i] + 1
        assert tensor_digest(changed) != base[0] and tensor_checksum(changed) != base[1]
    swapped = t.clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places
    assert tensor_checksum(swapped) != base[1]


def test_cli_recipe_loads_the_model_with_it(tiny_checkpoints, tmp_path, monkeypatch):
    import tte_fast.eval.runner as runner
    from tte_fast.cli import main

    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eval", "config.yaml")
    loaded = {}

    def load_only(config, verbose=True):
        loaded["model"] = runner.load_model(config.model, str(tmp_path))

    monkeypatch.setattr(runner, "evaluate", load_only)
    path = tiny_checkpoints["qwen2_vl"]
    main(["eval", example, f"model.path={path}", f"output_dir={tmp_path}", "--recipe", "vlm2vec"])
    assert loaded["model"].config.recipe == "vlm2vec"
    assert "recipe: vlm2vec" in (tmp_path / "config.yaml").read_text()  # the resolved config says so


def test_traces_are_keyed_on_how_the_reasoner_decodes(tiny_checkpoints):
    """A setting that changes traces (stop tokens, the checkpoint's sampling) changes their cache key."""
    from tte_fast.eval.encoder import ModelRunner
    from tte_fast.model import UnifiedTTE

    path = tiny_checkpoints["qwen2_vl"]
    keys = {
        name: ModelRunner(UnifiedTTE.from_pretrained(path, device="cpu", **opts)).trace_fingerprint("query")
        for name, opts in {
            "plain": {},
            "again": {},
            "stop_tokens": {"stop_tokens": ["<|object_ref_end|>"]},
            "checkpoint_sampling": {"generation": "checkpoint", "max_pixels": 4000},
        }.items()
    }
    assert keys["plain"] == keys["again"]
    assert len({keys["plain"], keys["stop_tokens"], keys["checkpoint_sampling"]}) == 3
