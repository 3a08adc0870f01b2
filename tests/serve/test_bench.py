"""bench/serve.py runs end to end (two server processes, a few clients): a smoke test, timings unchecked."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

pytest.importorskip("fastapi")


@pytest.mark.slow
def test_bench_serve_runs(tiny_checkpoints, tmp_path):
    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "bench", "serve.py")
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serve.json"
    args = ["--model", tiny_checkpoints["qwen2_vl"], "--clients", "1", "3", "--requests", "1"]
    bench.main([*args, "--max-think-tokens", "2", "--slots", "4", "--repeats", "1", "--json", str(out)])
    points = json.loads(out.read_text())["points"]
    assert [(p["mode"], p["clients"]) for p in points] == [
        ("batched", 1),
        ("one_at_a_time", 1),
        ("batched", 3),
        ("one_at_a_time", 3),
    ]
    assert all(p["rps"] > 0 and 0 < p["p50_s"] <= p["p99_s"] for p in points)
