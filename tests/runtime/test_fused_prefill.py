"""The fused decoder's prefill (``FusedDecoder.prefill``, taken by ``Runner.hidden_states``) against
transformers' own forward.

A left-padded batch of random prompts is prefilled onto a fresh ``DynamicCache``, and, as the
engine's shared-prefix prefill does, a common prefix once and then every row's tail onto copies of
it: the hidden states of the real tokens and the keys and values in the cache equal transformers'
layers run on the same inputs, for every supported model type, and no transformers decoder layer
runs. Forwards the fused prefill must not take (pictures, autograd, hooks, other caches) run
transformers' layers.
"""

from __future__ import annotations

import pytest
import torch
from fused_cases import TOLERANCE, make_model
from transformers import DynamicCache, StaticCache

from tte_fast.runtime import fused_decoder
from tte_fast.runtime.fused_decoder import prefill_attention, prefill_mask
from tte_fast.runtime.positions import prefill_position_ids
from tte_fast.runtime.runner import Runner
from tte_fast.runtime.shared_prefix import split_batch
from tte_fast.testing import TINY_MODEL_TYPES

LENGTHS = [11, 6, 14]  # real tokens per row; the batch is left-padded to the longest
SHARED = 5  # tokens every row begins with, for the shared-prefix prefill


def prompt_batch(model, gen) -> dict:
    vocab = model.get_input_embeddings().num_embeddings
    width = max(LENGTHS)
    ids = torch.randint(0, vocab, (len(LENGTHS), width), generator=gen)
    mask = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    prefix = torch.randint(0, vocab, (SHARED,), generator=gen)
    for row, n in enumerate(LENGTHS):
        mask[row, width - n :] = 1
        ids[row, width - n : width - n + SHARED] = prefix
    return {"input_ids": ids, "attention_mask": mask}


class LayerCalls:
    """Counts calls of the model's decoder layers (through their class, not hooks: a hook alone
    sends the forward to transformers)."""

    def __init__(self, model, monkeypatch):
        self.count = 0
        layer_class = type(model.base_model.get_decoder().layers[0])
        forward = layer_class.forward

        def counted(module, *args, **kwargs):
            self.count += 1
            return forward(module, *args, **kwargs)

        monkeypatch.setattr(layer_class, "forward", counted)


def prefill(runner, batch, shared: bool):
    """Final-norm hidden states of the real tokens (row by row) and the cache, plain or shared-prefix."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions, _ = prefill_position_ids(runner.hf_model, batch)
    cache = DynamicCache(config=runner.hf_model.config)
    with torch.inference_mode():
        if not shared:
            hidden = runner.hidden_states(ids, positions, mask, cache)
            return [hidden[row, mask[row].bool()] for row in range(len(ids))], cache, None
        prefix_ids, prefix_positions, tail_ids, tail_mask, tail_positions, columns = split_batch(
            ids, mask, positions, SHARED
        )
        runner.hidden_states(prefix_ids, prefix_positions, torch.ones_like(prefix_ids), cache)
        cache.batch_repeat_interleave(len(ids))
        hidden = runner.hidden_states(tail_ids, tail_positions, tail_mask, cache)
        tails = tail_mask[:, SHARED:].bool()
        return [hidden[row, tails[row]] for row in range(len(ids))], cache, columns


def real_columns(batch, columns, row: int) -> torch.Tensor:
    if columns is not None:
        return columns[row]
    return batch["attention_mask"][row].nonzero()[:, 0]


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prefix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", [*TINY_MODEL_TYPES, "llama", "qwen3"])
def test_a_fused_prefill_equals_transformers(model_type, dtype, shared, monkeypatch):
    model = make_model(model_type, dtype)
    fused, reference = Runner(model, decoder="fused"), Runner(model, decoder="transformers")
    batch = prompt_batch(model, torch.Generator().manual_seed(4))
    calls = LayerCalls(model, monkeypatch)
    got, got_cache, columns = prefill(fused, batch, shared)
    assert calls.count == 0  # the fused forward ran, not transformers' layers
    want, want_cache, _ = prefill(reference, batch, shared)
    assert calls.count > 0
    tol = TOLERANCE[dtype]
    for row in range(len(LENGTHS)):
        torch.testing.assert_close(got[row].float(), want[row].float(), atol=tol, rtol=tol)
        seen = real_columns(batch, columns, row)
        for a, b in zip(got_cache.layers, want_cache.layers):
            torch.testing.assert_close(a.keys[row][:, seen], b.keys[row][:, seen], atol=tol, rtol=tol)
            torch.testing.assert_close(a.values[row][:, seen], b.values[row][:, seen], atol=tol, rtol=tol)


def test_forwards_the_fused_prefill_does_not_take_run_transformers(monkeypatch):
    """Vision inputs, autograd, forward hooks (the TTE_u head's capture), other caches, no mask:
    transformers' layers run."""
    model = make_model("qwen2")
    runner = Runner(model, decoder="fused")
    batch = prompt_batch(model, torch.Generator().manual_seed(5))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        assert runner._fused_forward(ids, mask, cache, {})
        assert runner._fused_forward(ids, mask, None, {"mm_token_type_ids": torch.zeros_like(ids)})
        assert not runner._fused_forward(ids, mask, cache, {"pixel_values": torch.zeros(4, 8)})
        assert not runner._fused_forward(ids, None, cache, {})
        assert not runner._fused_forward(ids, mask[:, 1:], cache, {})  # the mask must cover every column
        static = StaticCache(config=model.config, max_cache_len=32)
        assert not runner._fused_forward(ids, mask, static, {})
    assert not runner._fused_forward(ids, mask, cache, {})  # autograd on

    calls = LayerCalls(model, monkeypatch)
    layer = model.model.layers[1]
    handle = layer.register_forward_pre_hook(lambda *args: None)
    try:
        prefill(runner, batch, shared=False)
    finally:
        handle.remove()
    assert calls.count == len(model.model.layers)
    prefill(runner, batch, shared=False)
    assert calls.count == len(model.model.layers)
    # A forward asked for hidden states leaves transformers' inert recording hooks on the layers:
    # the fused prefill still runs.
    with torch.no_grad():
        model(input_ids=batch["input_ids"][:1, -4:], output_hidden_states=True)
    assert any(m._forward_hooks for m in model.model.layers)
    calls.count = 0
    prefill(runner, batch, shared=False)
    assert calls.count == 0


@pytest.mark.parametrize("blocks", [1, 4], ids=["one-block", "row-blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_attention_equals_the_float64_reference(dtype, blocks, monkeypatch):
    """Grouped heads, past columns, left padding in the past and the new columns, causal; in one
    block and in blocks of query rows (each over the columns its last row sees)."""
    if blocks > 1:  # 2 query rows a block: 3 rows x 6 heads x 11 columns = 198 scores each
        monkeypatch.setattr(fused_decoder, "SCORE_BUDGET", 400)
    gen = torch.Generator().manual_seed(6)
    batch, heads, kv_heads, past, width, dim = 3, 6, 2, 4, 7, 16
    query = torch.randn(batch, heads, width, dim, generator=gen).to(dtype)
    key, value = (torch.randn(batch, kv_heads, past + width, dim, generator=gen).to(dtype) for _ in range(2))
    mask = torch.ones(batch, past + width, dtype=torch.bool)
    mask[1, past : past + 3] = False  # row 1: padding between its past and its tail
    mask[2, :2] = False  # row 2: left padding
    allowed = prefill_mask(mask, width)
    got = prefill_attention(query, key, value, allowed, 0.3)

    k, v = (t.double().repeat_interleave(heads // kv_heads, 1) for t in (key, value))
    scores = (query.double() @ k.transpose(-1, -2)) * 0.3
    columns = torch.arange(past + width)
    causal = columns[None, :] <= (past + torch.arange(width))[:, None]
    visible = mask[:, None, None, :] & causal
    want = (scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v).transpose(1, 2)
    real = mask[:, past:]  # padding rows see only themselves: finite, but not compared
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got[real].double(), want[real], atol=tol, rtol=tol)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("model_type", ["qwen2", "qwen2_vl"])
def test_embeddings_without_thinking_run_the_fused_prefill(model_type, tiny_checkpoints, monkeypatch):
    """``encode(think=False)`` of text runs no transformers decoder layer and equals transformers'
    forward over each sequence alone; a batch with a picture runs transformers' layers."""
    from tte_fast.model import UnifiedTTE

    model = UnifiedTTE.from_pretrained(tiny_checkpoints[model_type], device="cpu")
    texts = ["a short query", {"text": "a somewhat longer query about cats", "instruction": "Find it."}]
    calls = LayerCalls(model.hf_model, monkeypatch)
    result = model.encode(texts, think=False, batch_size=2)
    assert calls.count == 0
    for embedding, sequence in zip(result.embeddings, result.sequences):
        with torch.inference_mode():
            out = model.hf_model(input_ids=sequence[None], output_hidden_states=True)
        want = torch.nn.functional.normalize(out.hidden_states[-1][0, -1].float(), dim=-1)
        torch.testing.assert_close(embedding, want, atol=2e-5, rtol=0)
    if model.vision:
        layers = calls.count
        picture = torch.randint(0, 256, (56, 56, 3), dtype=torch.uint8).numpy()
        model.encode([{"image": picture, "text": "what is shown"}], think=False)
        assert calls.count > layers
