"""Each training job overfits the example batch on the tiny Qwen2-VL, and its output loads and encodes
through UnifiedTTE / TwoModelTTE exactly as it was trained (same prompts, same embedding)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.train_cases import EXAMPLES, config, example, losses
from tte_fast import TwoModelTTE, UnifiedTTE
from tte_fast.cli import main
from tte_fast.train import train
from tte_fast.train.batches import Renderer, load_item
from tte_fast.train.encoders import Embedder, HeadEncoder
from tte_fast.train.records import read_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _queries(model: UnifiedTTE, traces=None):
    """The example queries as encode() takes them, their traces, and the training renderer's batch."""
    records = read_dataset(example("pairs.jsonl"), "jsonl", "embedder")
    inputs = [{k: v for k, v in r.query.items() if v is not None} for r in records]
    traces = traces or [r.query_trace for r in records]
    items = [load_item(r.source, "query", r.query, True) for r in records]
    renderer = Renderer(model.processor, True, model.config.prompts, model.embed_token_id, "</think>")
    return inputs, traces, renderer.contrastive_batch(items, "query", traces)


def _falls(output_dir, last: int, factor: float) -> None:
    got = losses(output_dir)
    assert got[last] < factor * got[1], got


def test_embedder_job(tiny_checkpoints, tmp_path):
    cfg = config(
        "embedder",
        tiny_checkpoints["qwen2_vl"],
        tmp_path,
        data={"datasets": [{"path": example("pairs.jsonl")}], "negatives": 1},
        train={"steps": 5, "lr": 3e-3},
    )
    final = train(cfg)
    _falls(tmp_path, 5, 0.5)
    model = UnifiedTTE.from_pretrained(final, dtype=torch.float32, device="cpu")
    inputs, traces, batch = _queries(model)
    encoded = model.encode(inputs, traces=traces, batch_size=4).embeddings
    with torch.no_grad():
        trained = Embedder(model.hf_model)(**batch)
    torch.testing.assert_close(encoded, trained, atol=1e-5, rtol=1e-5)
    # A different embedding from the base model's: the weights were merged into the checkpoint.
    base = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], dtype=torch.float32, device="cpu")
    assert (base.encode(inputs, traces=traces).embeddings - encoded).abs().max() > 1e-3


def test_reasoner_job_loads_as_two_model_reasoner(tiny_checkpoints, tmp_path):
    cfg = config(
        "reasoner",
        tiny_checkpoints["qwen2_vl"],
        tmp_path,
        train={"steps": 6, "lr": 3e-2},
        lora={"enabled": False},
    )
    final = train(cfg)
    _falls(tmp_path, 6, 0.7)
    two = TwoModelTTE.from_pretrained(final, tiny_checkpoints["qwen2_vl"], dtype=torch.float32, device="cpu")
    result = two.encode(["a red square", {"image": example("images/blue_circle.png")}], max_think_tokens=4)
    assert result.embeddings.shape[0] == 2 and all(t.startswith("<think>") for t in result.traces)
    assert os.path.isfile(os.path.join(final, "tte_config.json"))


def test_head_job_through_the_cli_with_generated_traces(tiny_checkpoints, tmp_path):
    # The shipped example config, with query traces left for the frozen model to write.
    with open(example("pairs.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    untraced = tmp_path / "untraced.jsonl"
    untraced.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "query_trace"}) + "\n" for r in rows)
    )
    out = tmp_path / "run"
    main(
        ["train", example("head.yaml"), f"model={tiny_checkpoints['qwen2_vl']}", f"output_dir={out}"]
        + ["train.steps=5", "train.lr=3e-3", "log.progress=false", "head.traces=generate"]
        + [
            "head.max_think_tokens=4",
            f"data.datasets.0.path={untraced}",
            f"data.datasets.0.image_root={EXAMPLES}",
        ]
    )
    _falls(out, 5, 0.5)
    with open(out / "traces.jsonl", encoding="utf-8") as f:
        generated = [json.loads(line)["trace"] for line in f]
    assert len(generated) == 4 and all(t.startswith("<think>") for t in generated)
    model = UnifiedTTE.from_pretrained(str(out / "final"), dtype=torch.float32, device="cpu")
    assert model.head is not None and model.head.num_layers == 2
    inputs, _, batch = _queries(model, generated)
    encoded = model.encode(inputs, traces=generated, batch_size=4).embeddings
    with torch.no_grad():
        trained = HeadEncoder(model.head, model.hf_model)(**batch)
    torch.testing.assert_close(encoded, trained, atol=1e-5, rtol=1e-5)
