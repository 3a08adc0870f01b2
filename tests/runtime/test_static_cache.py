"""The decoder's shared state: bounded compiled shapes, reused caches, per-input sampling seeds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from tte_fast.model import UnifiedTTE
from tte_fast.profiling import StageRecorder
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.static import StaticBatches
from tte_fast.runtime.static_cache import compiled_batch, compiled_length, graph_bound

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_model(tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")


@pytest.fixture(scope="module")
def vl_model(tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


def prompts(model, texts: list[str]) -> dict:
    return dict(
        model.tokenizer(
            texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
        )
    )


def test_shape_buckets():
    assert [compiled_batch(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert [compiled_length(n) for n in (1, 64, 65, 129, 300)] == [64, 64, 128, 256, 512]
    # Batches of 1..8 rows (4 buckets) and lengths up to 2048 (64 .. 2048: 6 buckets).
    assert graph_bound(8, 2048) == 24


def test_compiled_step_meets_only_bucketed_shapes(text_model):
    """Batch sizes 1, 3, 4 and prompts of two length buckets: 1, 4 and 4 rows and 64 or 128
    columns give three graphs, where one graph per exact (batch, length) would give four; padded
    rows never change the real rows' tokens."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = StaticBatches.of(text_model.hf_model, compile=counter)
    eager = StaticBatches.of(text_model.hf_model)
    options = DecodeOptions(max_think_tokens=3, eos_token_ids=text_model.eos_token_ids)
    long_text = " ".join(["word"] * 70)
    batches = [["one"], ["a", "bb", "ccc"], ["a", "b", "c", "d"], ["x", long_text, "y"]]
    keys = set()
    for texts in batches:
        batch = prompts(text_model, texts)
        got = compiled.decode(batch, options, embed_token_id=text_model.embed_token_id)
        want = eager.decode(batch, options, embed_token_id=text_model.embed_token_id)
        assert [t.tolist() for t in got.generated] == [t.tolist() for t in want.generated]
        torch.testing.assert_close(got.embed_hidden, want.embed_hidden, atol=1e-5, rtol=1e-5)
        total = batch["input_ids"].shape[1] + options.max_new_tokens + 1
        keys.add((compiled_batch(len(texts)), compiled_length(total)))
    assert keys == {(1, 64), (4, 64), (4, 128)}
    assert counter.frame_count == len(keys)
    assert compiled.runner.shapes.seen == keys


def test_a_shape_past_the_recompile_limit_warns(text_model):
    torch._dynamo.reset()
    decoder = StaticBatches.of(text_model.hf_model, compile=CompileCounter())
    options = DecodeOptions(max_think_tokens=2, eos_token_ids=text_model.eos_token_ids)
    with torch._dynamo.config.patch(recompile_limit=1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            decoder.decode(prompts(text_model, ["one"]), options)
        with pytest.warns(RuntimeWarning, match="run eagerly"):
            decoder.decode(prompts(text_model, ["one", "two"]), options)


def test_alternating_batch_sizes_reuse_their_caches_and_release_frees_them(text_model):
    decoder = StaticBatches.of(text_model.hf_model)
    options = DecodeOptions(max_think_tokens=2, eos_token_ids=text_model.eos_token_ids)
    three, two = prompts(text_model, ["a", "b", "c"]), prompts(text_model, ["a", "b"])
    decoder.decode(three, options)
    first = dict(decoder.caches.caches)
    decoder.decode(two, options)
    decoder.decode(three, options)
    assert len(decoder.caches) == 2
    for key, cache in first.items():
        assert decoder.caches.caches[key] is cache  # not reallocated
    decoder.release()
    assert len(decoder.caches) == 0


def test_release_memory_frees_the_models_caches(text_model):
    text_model.encode(["hello"], think=True, max_think_tokens=2, scheduler="static")
    text_model.encode(["hello"], think=True, max_think_tokens=2, scheduler="continuous")
    assert len(text_model.batches.caches) > 0 and text_model._engine is not None
    text_model.release_memory()
    assert len(text_model.batches.caches) == 0 and text_model._engine is None


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def test_a_seed_gives_each_input_the_same_trace_in_any_batch_and_order(vl_model):
    inputs = [
        "first text",
        {"image": _image(0), "text": "an image"},
        "a somewhat longer second text",
        {"image": _image(1)},
        "third",
    ]
    sample = dict(do_sample=True, temperature=1.5, seed=11, max_think_tokens=6)
    alone = [vl_model.think([item], **sample)[0] for item in inputs]
    together = vl_model.think(inputs, batch_size=5, **sample)
    order = [3, 0, 4, 1, 2]
    shuffled = vl_model.think([inputs[i] for i in order], batch_size=2, **sample)
    assert together == alone
    assert [shuffled[order.index(i)] for i in range(len(inputs))] == alone
    # The same image under another seed samples differently (the seed reaches every row).
    other = vl_model.think(inputs, batch_size=5, **{**sample, "seed": 12})
    assert other != alone


def test_an_error_in_the_vision_tower_closes_its_range(vl_model, monkeypatch):
    visual = vl_model.hf_model.model.visual

    def broken(*args, **kwargs):
        raise RuntimeError("vision tower failed")

    monkeypatch.setattr(visual, "forward", broken)
    with StageRecorder() as recorder, pytest.raises(RuntimeError, match="vision tower failed"):
        vl_model.encode([{"image": _image(2)}], think=False)
    # The range closed (and was timed) although the tower raised.
    assert recorder.counts["vision_encoder"] == 1
