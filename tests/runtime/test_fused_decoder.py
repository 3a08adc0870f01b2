"""The fused decoder (tte_fast.runtime.fused_decoder) against transformers' own forward.

One decode step of random tokens onto a slot cache holding random earlier columns, the busy slots
a subset with their own lengths and M-RoPE deltas: the fused step's hidden states, and the keys and
values it writes, equal transformers' layers run over a copy of the same cache (the reference), for
every supported model type. Weights changed after a step are picked up; unsupported models fall
back to transformers or, when the fused decoder is asked for, fail with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fused_cases import TOLERANCE, make_model

from tte_fast.runtime import slot_attention
from tte_fast.runtime.fused_decoder import FusedDecoder, unsupported_reason
from tte_fast.runtime.packed_prefill import text_attention
from tte_fast.runtime.positions import decode_position_ids, uses_mrope
from tte_fast.runtime.runner import Runner
from tte_fast.runtime.slot_cache import SlotCache
from tte_fast.testing import TINY_MODEL_TYPES


def filled_cache(model, slots: int, length: int, gen) -> tuple[SlotCache, list[int]]:
    cache = SlotCache.for_model(model, slots, length)
    for keys, values in zip(cache.keys, cache.values):
        keys.copy_(torch.randn(keys.shape, generator=gen))
        values.copy_(torch.randn(values.shape, generator=gen))
    lengths = torch.randint(1, length - 1, (slots,), generator=gen).tolist()
    for slot, n in enumerate(lengths):
        cache.positions[slot], cache.host_positions[slot] = n, n
    return cache, lengths


def step_inputs(model, cache, busy, lengths, gen):
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (len(busy), 1), generator=gen)
    text = torch.tensor([lengths[i] for i in busy])
    deltas = torch.randint(-7, 8, (len(busy), 1), generator=gen) if uses_mrope(model) else None
    return ids, decode_position_ids(text, deltas)


def run_step(runner, cache, busy, ids, positions, dtype):
    slot_attention.register()
    cache.select(busy, windowed=True)
    try:
        with torch.inference_mode(), text_attention(runner.hf_model, slot_attention.SLOT_ATTENTION):
            return runner.decode_step(ids, positions, cache.attention_bias(dtype), cache)
    finally:
        cache.select(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", [*TINY_MODEL_TYPES, "llama", "qwen3"])
def test_a_fused_step_equals_transformers(model_type, dtype):
    model = make_model(model_type, dtype)
    fused, reference = Runner(model, decoder="fused"), Runner(model, decoder="transformers")
    assert fused.fused is not None and reference.fused is None
    gen = torch.Generator().manual_seed(1)
    cache, lengths = filled_cache(model, slots=5, length=70, gen=gen)
    twin = copy.deepcopy(cache)
    busy = [0, 2, 3]
    ids, positions = step_inputs(model, cache, busy, lengths, gen)
    got, got_logits = run_step(fused, cache, busy, ids, positions, dtype)
    want, want_logits = run_step(reference, twin, busy, ids, positions, dtype)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert got_logits.dtype == want_logits.dtype == dtype  # the head's dtype: no float32 copy a step
    torch.testing.assert_close(got_logits, want_logits, atol=tol, rtol=tol)
    for layer in range(len(cache.keys)):  # the same columns written, and only those
        torch.testing.assert_close(cache.keys[layer], twin.keys[layer], atol=tol, rtol=tol)
        torch.testing.assert_close(cache.values[layer], twin.values[layer], atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", ["llama", "qwen2_vl"])
def test_the_cpp_step_equals_the_ops_in_turn(model_type, dtype, monkeypatch):
    """On an eager CPU step every layer's rotary, cache write and attention run as one C++ pass
    (``step_attention``, its checks made once a step), bit-identical to the ops in turn (rotary,
    ``cache.update``, ``attend``), hidden states, logits and cache alike."""
    from tte_fast.runtime import fused_decoder

    model = make_model(model_type, dtype)
    runner = Runner(model, decoder="fused")
    gen = torch.Generator().manual_seed(2)
    cache, lengths = filled_cache(model, slots=5, length=70, gen=gen)
    twin = copy.deepcopy(cache)
    busy = [1, 2, 4]
    ids, positions = step_inputs(model, cache, busy, lengths, gen)
    plans, layer_calls, step_attention = [], [], fused_decoder.step_attention

    def counted(*args):
        plans.append(step_attention(*args))

        def layer_attention(qkv, key, value, scale):
            layer_calls.append(key)
            return plans[-1](qkv, key, value, scale)

        return layer_attention

    monkeypatch.setattr(fused_decoder, "step_attention", counted)
    got, got_logits = run_step(runner, cache, busy, ids, positions, dtype)
    assert len(plans) == 1 and plans[0] is not None
    assert [k.data_ptr() for k in layer_calls] == [k.data_ptr() for k in cache.keys]  # each layer, in turn
    monkeypatch.setattr(fused_decoder, "step_attention", lambda *args: None)
    want, want_logits = run_step(runner, twin, busy, ids, positions, dtype)
    assert torch.equal(got, want) and torch.equal(got_logits, want_logits)
    for layer in range(len(cache.keys)):
        assert torch.equal(cache.keys[layer], twin.keys[layer])
        assert torch.equal(cache.values[layer], twin.values[layer])


def test_changed_weights_are_picked_up():
    """Training between decodes (in place, or a weight or bias replaced) never leaves stale fused weights."""
    model = make_model("qwen2")
    fused, reference = Runner(model, decoder="fused"), Runner(model, decoder="transformers")
    gen = torch.Generator().manual_seed(2)
    cache, lengths = filled_cache(model, slots=3, length=40, gen=gen)
    busy = [0, 1, 2]
    ids, positions = step_inputs(model, cache, busy, lengths, gen)
    run_step(fused, copy.deepcopy(cache), busy, ids, positions, torch.float32)  # fused weights made
    layer = model.model.layers[1]

    def in_place():
        with torch.no_grad():
            layer.self_attn.k_proj.weight.mul_(3.0)

    def replaced():
        layer.mlp.up_proj.weight = torch.nn.Parameter(layer.mlp.up_proj.weight * 2.0)

    def lm_head():
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(1.5)

    def bias_only():  # Qwen2's q / k / v biases are fused too
        with torch.no_grad():
            layer.self_attn.v_proj.bias.add_(0.5)

    for change in (in_place, replaced, lm_head, bias_only):
        change()
        got = run_step(fused, copy.deepcopy(cache), busy, ids, positions, torch.float32)
        want = run_step(reference, copy.deepcopy(cache), busy, ids, positions, torch.float32)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=change.__name__)


def test_unsupported_models_run_through_transformers():
    from peft import LoraConfig, get_peft_model

    model = make_model("qwen2")
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    reason = unsupported_reason(wrapped)
    assert reason is not None and "q_proj" in reason
    assert Runner(wrapped).fused is None  # "auto" falls back
    with pytest.raises(ValueError, match="q_proj"):
        Runner(wrapped, decoder="fused")
    gelu = make_model("llama")
    gelu.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="gelu"):
        FusedDecoder(gelu)
    with pytest.raises(ValueError, match="decoder must be one of"):
        Runner(model, decoder="fast")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear(bias, dtype):
    """CPU projections through oneDNN's packed weights equal F.linear (3-D inputs, with and without
    a bias, any number of rows)."""
    from tte_fast.runtime.cpu_linear import PackedLinear

    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(48, 20, generator=gen).to(dtype)
    b = torch.randn(48, generator=gen).to(dtype) if bias else None
    linear = PackedLinear(weight, b)
    assert linear.packed is not None or not torch.backends.mkldnn.is_available()
    for rows in (1, 5, 70):
        x = torch.randn(rows, 1, 20, generator=gen).to(dtype)
        want = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(linear(x).double(), want, atol=tol * want.abs().max(), rtol=tol)
