"""``load_tte``: one loader for a checkpoint folder, a two-model folder or pair, and ``tiny:`` specs."""

from __future__ import annotations

import os
import shutil

from tte_fast import TwoModelTTE, UnifiedTTE, load_tte


def test_a_folder_is_a_unified_model(tiny_checkpoints):
    model = load_tte(tiny_checkpoints["qwen2"], device="cpu", prefill_attention="sdpa_varlen")
    assert isinstance(model, UnifiedTTE) and model.prefill_attention == "sdpa_varlen"


def test_two_model_folders_and_pairs(tiny_checkpoints, tmp_path):
    pair = tmp_path / "pair"
    shutil.copytree(tiny_checkpoints["qwen2"], pair / "reasoner")
    shutil.copytree(tiny_checkpoints["qwen2_vl"], pair / "embedder")
    two = load_tte(str(pair), device="cpu")
    assert isinstance(two, TwoModelTTE)
    assert (two.reasoner.model_type, two.embedder.model_type) == ("qwen2", "qwen2_vl")
    given = load_tte(tiny_checkpoints["qwen2_vl"], reasoner=tiny_checkpoints["qwen2"], device="cpu")
    assert (given.reasoner.model_type, given.embedder.model_type) == ("qwen2", "qwen2_vl")


def test_tiny_specs_are_built_once(tmp_path, capsys):
    model = load_tte("tiny:qwen2", scratch_dir=str(tmp_path), device="cpu")
    assert isinstance(model, UnifiedTTE) and model.model_type == "qwen2"
    assert "RANDOM" in capsys.readouterr().out
    weights = tmp_path / "tiny_models" / "qwen2" / "model.safetensors"
    built = os.stat(weights).st_mtime_ns
    load_tte("tiny:qwen2", scratch_dir=str(tmp_path), device="cpu")
    assert os.stat(weights).st_mtime_ns == built
