"""Padding-free admission prefill: prompts packed into one row give the same traces, sequences and
embeddings as static batches on every model type (images and M-RoPE included), compute no padding
(counted), and the attention backend is chosen, overridable and checked."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import assert_rel_close, engine_inputs

from tte_fast.inputs import check_input
from tte_fast.model import UnifiedTTE
from tte_fast.runtime.engine import Engine
from tte_fast.runtime.packed_prefill import choose_prefill_attention, pack_prompts, text_attention
from tte_fast.testing import TINY_MODEL_TYPES

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # embeddings (unit norm)
# Cached keys and values, relative to the largest: a few eps of the dtype per layer (fp32 measured <= 16 eps).
CACHE_TOLERANCE = {torch.float32: 64 * torch.finfo(torch.float32).eps, torch.bfloat16: 8 * 2**-8}


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def model(request, tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints[request.param], device="cpu")


@pytest.mark.parametrize("slots", [2, 4])
def test_packed_prefill_equals_static_batches(model, slots):
    static = model.encode(
        engine_inputs(model), think=True, max_think_tokens=6, batch_size=8, scheduler="static"
    )
    model.prefill_attention = "sdpa_varlen"
    try:
        got = model.encode(engine_inputs(model), think=True, max_think_tokens=6, batch_size=slots)
    finally:
        model.prefill_attention = "padded"
    assert model._engine.prefill_attention == "sdpa_varlen"
    assert got.traces == static.traces
    assert [s.tolist() for s in got.sequences] == [s.tolist() for s in static.sequences]
    torch.testing.assert_close(got.embeddings, static.embeddings, atol=ATOL[torch.float32], rtol=0)


def _prefill_shapes(model, backend: str, slots: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """Token shapes the text embedding saw in prefills (decode steps feed one column) and the prompt
    lengths of the requests."""
    shapes: list[tuple[int, ...]] = []
    hook = model.hf_model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: shapes.append(tuple(args[0].shape)) if args[0].shape[1] > 1 else None
    )
    try:
        engine = Engine(model, slots=slots, prefill_attention=backend)
        futures = [
            engine.submit(check_input(i, x), model.decode_options(max_think_tokens=3), index=i)
            for i, x in enumerate(engine_inputs(model))
        ]
        engine.run_until_done()
    finally:
        hook.remove()
    return shapes, [f.result().prompt_tokens for f in futures]


def test_packed_prefill_computes_no_padding(model):
    """The text layers see exactly the prompts' tokens packed (one row per prefill); padded prefill
    computes more (the prompts differ in length) on as many rows as prompts."""
    packed, lengths = _prefill_shapes(model, "sdpa_varlen", slots=3)
    padded, _ = _prefill_shapes(model, "padded", slots=3)
    assert all(rows == 1 for rows, _ in packed)
    assert sum(cols for _, cols in packed) == sum(lengths)
    assert sum(rows * cols for rows, cols in padded) > sum(lengths)


def test_packed_embedding_without_thinking_equals_encode(model):
    """Inputs that do not think are embedded at admission: packed too, in one row, same embeddings."""
    inputs = engine_inputs(model)
    want = model.encode(inputs, think=False)
    shapes: list[tuple[int, ...]] = []
    hook = model.hf_model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: shapes.append(tuple(args[0].shape))
    )
    try:
        engine = Engine(model, slots=2, prefill_attention="sdpa_varlen")
        options = model.decode_options()
        futures = [
            engine.submit(check_input(i, x), options, think=False, index=i) for i, x in enumerate(inputs)
        ]
        engine.run_until_done()
    finally:
        hook.remove()
    got = torch.stack([f.result().embedding for f in futures])
    torch.testing.assert_close(got, want.embeddings, atol=ATOL[torch.float32], rtol=0)
    assert engine.prefills == 0 and len(shapes) == 1 and shapes[0][0] == 1
    assert shapes[0][1] == sum(f.result().prompt_tokens for f in futures)


def test_pack_prompts_drops_padding_and_restarts_positions():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    positions = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]])
    packed = pack_prompts({"input_ids": ids, "attention_mask": mask, "pixel_values": "kept"}, positions)
    assert packed.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed.position_ids.tolist() == [[0, 1, 0, 1, 2, 3]]
    assert packed.inputs["pixel_values"] == "kept" and "attention_mask" not in packed.inputs
    assert packed.last_tokens == [1, 5] and packed.columns(1) == slice(2, 6)
    mrope = torch.stack([positions, positions + 10, positions + 20, positions + 30])
    assert pack_prompts({"input_ids": ids, "attention_mask": mask}, mrope).position_ids[:, 0, 0].tolist() == [
        0,
        10,
        20,
        30,
    ]


def test_auto_pads_on_cpu_and_bad_or_unusable_backends_are_named(model, tiny_checkpoints):
    assert choose_prefill_attention("auto", model.hf_model) == "padded"
    assert model.prefill_attention == "padded"  # from_pretrained's default, resolved
    with pytest.raises(ValueError, match="'ring'"):
        choose_prefill_attention("ring", model.hf_model)
    for backend in ("flash_varlen", "xformers"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            Engine(model, slots=2, prefill_attention=backend)
    with pytest.raises(ValueError, match="'flash_varlen' needs a CUDA device"):
        UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu", prefill_attention="flash_varlen")


def _admitted(model, backend: str) -> Engine:
    """An engine that has admitted every input (one prefill) and sampled nothing further."""
    inputs = engine_inputs(model)
    engine = Engine(model, slots=len(inputs), prefill_attention=backend)
    for i, x in enumerate(inputs):
        engine.submit(check_input(i, x), model.decode_options(max_think_tokens=4), index=i)
    engine.step()
    return engine


def assert_same_slots(got: Engine, want: Engine, tol: float) -> None:
    """Each slot's keys and values (every layer), position, text position and M-RoPE delta."""
    assert got.cache.positions.tolist() == want.cache.positions.tolist()
    assert got.text_pos.tolist() == want.text_pos.tolist()
    assert got.deltas.tolist() == want.deltas.tolist()
    for slot, n in enumerate(want.cache.positions.tolist()):
        for store in ("keys", "values"):
            for a, b in zip(getattr(got.cache, store), getattr(want.cache, store)):
                assert_rel_close(a[slot, :, :n], b[slot, :, :n], tol, f"slot {slot} {store}")


def test_packed_slots_hold_what_padded_prefill_writes(model):
    """After one admission (and one decode step), every slot's cache equals the padded prefill's."""
    assert_same_slots(
        _admitted(model, "sdpa_varlen"), _admitted(model, "padded"), CACHE_TOLERANCE[torch.float32]
    )


def test_text_attention_switches_the_text_layers_only_and_restores(vl_model):
    hf = vl_model.hf_model
    text, vision = hf.config.get_text_config(), hf.config.vision_config
    before = (text._attn_implementation, vision._attn_implementation)
    with pytest.raises(RuntimeError), text_attention(hf, "tte_fast_sdpa_varlen"):
        assert text._attn_implementation == "tte_fast_sdpa_varlen"
        assert vision._attn_implementation == before[1]
        raise RuntimeError
    assert (text._attn_implementation, vision._attn_implementation) == before


def _gpu_backends() -> list[str]:
    names = [("flash_varlen", "flash_attn"), ("xformers", "xformers")]
    return [n for n, package in names if importlib.util.find_spec(package) is not None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", _gpu_backends() or ["none installed"])
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2"])
def test_gpu_backends_fill_slots_as_padded_prefill(tiny_checkpoints, backend, model_type):
    if backend == "none installed":
        pytest.skip("needs flash-attn or xformers")
    gpu = UnifiedTTE.from_pretrained(
        tiny_checkpoints[model_type], device="cuda", dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    assert_same_slots(_admitted(gpu, backend), _admitted(gpu, "padded"), CACHE_TOLERANCE[torch.bfloat16])
    assert choose_prefill_attention("auto", gpu.hf_model) == _gpu_backends()[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_a_flash_loaded_model_decodes_through_the_slot_bias(tiny_checkpoints):
    """flash-attn cannot take the slot cache's 4-D bias: a flash-loaded model's engine decodes through
    SDPA and prefills through flash varlen, and fills its slots as an SDPA model's padded engine."""
    path = tiny_checkpoints["qwen2_vl"]
    flash = UnifiedTTE.from_pretrained(
        path, device="cuda", dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    )
    sdpa = UnifiedTTE.from_pretrained(path, device="cuda", dtype=torch.bfloat16, attn_implementation="sdpa")
    assert flash.prefill_attention == "flash_varlen"
    got, want = _admitted(flash, "flash_varlen"), _admitted(sdpa, "padded")
    got.step(), want.step()
    assert_same_slots(got, want, CACHE_TOLERANCE[torch.bfloat16])


def test_sequence_bounds_are_read_once_per_forward(monkeypatch, vl_model):
    """Every text layer gets the same packed positions: their bounds go to the host once a prefill."""
    from tte_fast.runtime import varlen_attention

    calls = []
    real = varlen_attention.cu_seqlens_from_positions
    monkeypatch.setattr(varlen_attention, "cu_seqlens_from_positions", lambda p: calls.append(1) or real(p))
    engine = Engine(vl_model, slots=3, prefill_attention="sdpa_varlen")
    for i, x in enumerate(engine_inputs(vl_model)[:3]):
        engine.submit(check_input(i, x), vl_model.decode_options(max_think_tokens=1), embed=False, index=i)
    engine.run_until_done()
    assert vl_model.hf_model.config.get_text_config().num_hidden_layers > 1
    assert len(calls) == engine.prefills == 1


def test_decode_steps_of_a_flash_loaded_model_run_through_sdpa(vl_model):
    """The slot cache's 4-D bias cannot go to flash-attn: a model whose text layers are set to
    flash_attention_2 decodes through SDPA (on CPU, where flash-attn cannot run at all, a step that
    reached it would fail) and gives the same traces and embeddings."""
    inputs = engine_inputs(vl_model)[:3]

    def run():
        engine = Engine(vl_model, slots=3, prefill_attention="sdpa_varlen")
        futures = [
            engine.submit(check_input(i, x), vl_model.decode_options(max_think_tokens=3), index=i)
            for i, x in enumerate(inputs)
        ]
        engine.run_until_done()
        return [f.result() for f in futures]

    want = run()
    text = vl_model.hf_model.config.get_text_config()
    loaded = text._attn_implementation
    text._attn_implementation_internal = "flash_attention_2"
    try:
        got = run()
    finally:
        text._attn_implementation_internal = loaded
    assert [r.trace for r in got] == [r.trace for r in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.embedding, b.embedding, atol=ATOL[torch.float32], rtol=0)
