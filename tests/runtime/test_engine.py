"""The continuous-batching engine against static batches and HF: same traces, sequences and
embeddings for every input whatever the slot count, arrival order and mix; slots reused at once."""

from __future__ import annotations

import pytest
import torch
from helpers import engine_inputs

from tte_fast.inputs import InputError, check_input
from tte_fast.model import UnifiedTTE
from tte_fast.runtime.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2"])
def model(request, tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints[request.param], device="cpu")


@pytest.fixture(scope="module")
def static(model):
    return model.encode(
        engine_inputs(model), think=True, max_think_tokens=6, batch_size=8, scheduler="static"
    )


@pytest.mark.parametrize("slots", [1, 2, 5])
@pytest.mark.parametrize("reverse", [False, True])
def test_engine_equals_static_batches(model, static, slots, reverse):
    inputs = engine_inputs(model)
    order = list(range(len(inputs)))[:: -1 if reverse else 1]
    got = model.encode([inputs[i] for i in order], think=True, max_think_tokens=6, batch_size=slots)
    for j, i in enumerate(order):
        assert got.traces[j] == static.traces[i]
        assert got.sequences[j].tolist() == static.sequences[i].tolist()
        torch.testing.assert_close(got.embeddings[j], static.embeddings[i], atol=ATOL, rtol=0)


def test_think_equals_static_and_per_request_budgets(model):
    inputs = engine_inputs(model)
    engine = Engine(model, slots=2)
    budgets = [2, 7, 3, 1, 5, 4][: len(inputs)]
    futures = [
        engine.submit(check_input(i, x), model.decode_options(max_think_tokens=b), embed=False, index=i)
        for i, (x, b) in enumerate(zip(inputs, budgets))
    ]
    engine.run_until_done()
    for i, (x, b) in enumerate(zip(inputs, budgets)):
        want = model.think([x], max_think_tokens=b, scheduler="static")[0]
        result = futures[i].result()
        assert result.trace == want and result.embedding is None
        assert result.generated_tokens == b  # random weights never close </think> or stop


def test_a_freed_slot_takes_the_next_request_at_once(model):
    """One long request and three short ones on two slots: the short ones pass through the second
    slot one after another while the long one still decodes."""
    engine = Engine(model, slots=2)
    inputs = ["a long one", "s1", "s2", "s3"]
    budgets = [12, 2, 2, 2]
    futures = [
        engine.submit(check_input(i, x), model.decode_options(max_think_tokens=b), index=i)
        for i, (x, b) in enumerate(zip(inputs, budgets))
    ]
    engine.run_until_done()
    results = [f.result() for f in futures]
    long_one = results[0]
    for short in results[1:]:
        assert short.finished_step < long_one.finished_step
    assert results[3].admitted_step > 0  # it waited for a slot, and entered while the long one ran
    # Each short request needs its first sample (prefill), one more token, its last-token feed and
    # its embedding step: the engine finishes in the long request's own time, not 12 + 3 * 3 steps.
    assert engine.steps == long_one.finished_step <= 12 + 2


def test_stale_cache_columns_never_leak(model):
    engine = Engine(model, slots=2)
    options = model.decode_options(max_think_tokens=4)
    clean = [engine.submit(check_input(0, x), options) for x in ("first", "second")]
    engine.run_until_done()
    for layer in range(len(engine.cache.keys)):  # garbage where earlier requests left their columns
        engine.cache.keys[layer].normal_(0, 50)
        engine.cache.values[layer].normal_(0, 50)
    again = [engine.submit(check_input(0, x), options) for x in ("first", "second")]
    engine.run_until_done()
    for a, b in zip(clean, again):
        assert a.result().trace == b.result().trace
        torch.testing.assert_close(a.result().embedding, b.result().embedding, atol=ATOL, rtol=0)


def test_the_engine_never_re_encodes(model):
    """Every forward through the first decoder layer is an admission prefill or a one-token step of
    the busy slots: thinking then embedding costs each prompt once plus one row per token fed after
    it (its trace and the embedding token), and an idle slot costs nothing."""
    # Counted where the decoder stack makes the rotary tables of its input, once per forward of
    # transformers' stack or of the fused decoder.
    rotary = model.hf_model.get_decoder().rotary_emb
    shapes = []
    handle = rotary.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[:2])))
    try:
        engine = Engine(model, slots=3)
        options = model.decode_options(max_think_tokens=5)
        futures = [
            engine.submit(check_input(i, x), options, index=i) for i, x in enumerate(engine_inputs(model))
        ]
        engine.run_until_done()
    finally:
        handle.remove()
    results = [f.result() for f in futures]
    prefills = [s for s in shapes if s[1] > 1]
    steps = [s for s in shapes if s[1] == 1]
    assert len(prefills) == engine.prefills and len(steps) == engine.steps
    assert sum(rows for rows, _ in steps) == sum(len(r.sequence) - r.prompt_tokens for r in results)
    assert sum(rows * length for rows, length in prefills) >= sum(r.prompt_tokens for r in results)


def test_same_seed_samples_as_static_batches(model):
    inputs = engine_inputs(model)
    sample = dict(do_sample=True, temperature=1.3, top_k=20, seed=5, max_think_tokens=5)
    static = model.think(inputs, batch_size=4, scheduler="static", **sample)
    continuous = model.think(inputs, batch_size=2, **sample)
    assert continuous == static


def test_bad_inputs_fail_alone(model):
    inputs = ["fine", "x " * 5000, "also fine"]
    if model.vision:
        inputs.insert(1, {"image": b"not an image"})
    result = model.encode(inputs, think=True, max_think_tokens=3, on_error="skip", batch_size=2)
    bad = {1, 2} if model.vision else {1}
    assert set(result.errors) == bad
    clean = model.encode(["fine", "also fine"], think=True, max_think_tokens=3, scheduler="static")
    good = [i for i in range(len(inputs)) if i not in bad]
    torch.testing.assert_close(result.embeddings[good], clean.embeddings, atol=ATOL, rtol=0)
    with pytest.raises(InputError, match="input 1:"):
        model.encode(inputs, think=True, max_think_tokens=3, batch_size=2)


def test_callers_sharing_an_index_keep_their_own_traces_and_errors(model):
    """Two callers' requests both named input 0 (a server's clients) in one admission: each is
    embedded with its own trace, and a prompt too long fails only its own request, named as its
    caller named it."""
    engine = Engine(model, slots=2)
    options = model.decode_options()
    texts, traces = ["a cat", "a dog on a sofa"], ["it purrs", "it barks at the door"]
    futures = [
        engine.submit(check_input(0, t), options, think=False, trace=tr, index=0)
        for t, tr in zip(texts, traces)
    ]
    too_long = engine.submit(check_input(3, "x " * 5000), options, think=False, trace="t", index=3)
    engine.run_until_done()
    want = model.encode(texts, think=False, traces=traces, scheduler="static")
    for future, embedding in zip(futures, want.embeddings):
        torch.testing.assert_close(future.result().embedding, embedding, atol=ATOL, rtol=0)
    with pytest.raises(InputError, match="^input 3: .*context"):
        too_long.result()


def test_a_cancelled_request_frees_its_slot(model):
    engine = Engine(model, slots=1)
    options = model.decode_options(max_think_tokens=30)
    doomed = engine.submit(check_input(0, "long and doomed"), options)
    engine.step()  # admitted: it holds the only slot
    assert doomed.cancel()  # as a disconnected client's request is
    kept = engine.submit(check_input(1, "next"), model.decode_options(max_think_tokens=2))
    engine.run_until_done()
    assert kept.result().generated_tokens == 2
    assert engine.steps < 10


def test_compiled_engine_steps_equal_eager(tiny_checkpoints):
    """With a compiled decoder every step runs all slots in one fixed shape (the graph CUDA replays);
    the eager backend traces the same step on CPU."""
    torch._dynamo.reset()
    path = tiny_checkpoints["qwen2"]
    compiled = UnifiedTTE.from_pretrained(path, device="cpu", compile="eager")
    eager = UnifiedTTE.from_pretrained(path, device="cpu")
    inputs = ["one", "two words", "and three words here", "x"]
    got = compiled.encode(inputs, think=True, max_think_tokens=4, batch_size=3)
    want = eager.encode(inputs, think=True, max_think_tokens=4, batch_size=3)
    assert got.traces == want.traces
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=ATOL, rtol=0)
    assert compiled.runner.shapes.seen == {(3, compiled._engine.cache.length)}


def test_a_compiled_engine_steps_its_tail_eagerly(tiny_checkpoints):
    """While fewer than COMPILED_SHARE of the slots are busy (the tail of a run) a compiled engine
    runs the eager step over the busy rows alone, not the compiled step over every slot; results
    equal an eager engine's."""
    torch._dynamo.reset()
    path = tiny_checkpoints["qwen2"]
    # No </think>: every row runs its own budget.
    compiled = UnifiedTTE.from_pretrained(path, device="cpu", compile="eager", think_end_token="")
    eager = UnifiedTTE.from_pretrained(path, device="cpu", think_end_token="")
    calls = []
    step = compiled.runner.step
    compiled.runner.step = lambda *args: calls.append(args[0].shape[0]) or step(*args)
    budgets = [1, 2, 3, 6]  # busy slots of 4 by step: 4, 4, 3 (a share of 0.75), 2, then 1 three times
    results, steps = {}, {}
    for name, model in (("compiled", compiled), ("eager", eager)):
        engine = Engine(model, slots=4, admit_at=4)
        futures = [
            engine.submit(check_input(i, f"input {i}"), model.decode_options(max_think_tokens=b), index=i)
            for i, b in enumerate(budgets)
        ]
        engine.run_until_done()
        results[name], steps[name] = [f.result() for f in futures], engine.steps
    assert [r.generated_tokens for r in results["compiled"]] == budgets
    assert steps == {"compiled": 7, "eager": 7}
    assert calls == [4, 4, 4], "the compiled step runs over every slot, only while 3 or 4 are busy"
    for got, want in zip(results["compiled"], results["eager"]):
        assert got.trace == want.trace
        torch.testing.assert_close(got.embedding, want.embedding, atol=ATOL, rtol=0)


@pytest.mark.parametrize("admit_at, prefills", [(4, 2), (1, 5)])
def test_admissions_wait_for_admit_at_free_slots(model, admit_at, prefills):
    """Four slots, four inputs that end one step apart, then four more waiting: with admit_at=4 the
    waiting ones enter together in one prefill once all slots are free; with admit_at=1 each freed
    slot is refilled at once, one prefill each."""
    engine = Engine(model, slots=4, admit_at=admit_at)
    budgets = [1, 2, 3, 4, 4, 4, 4, 4]
    futures = [
        engine.submit(check_input(i, f"input {i}"), model.decode_options(max_think_tokens=b), index=i)
        for i, b in enumerate(budgets)
    ]
    engine.run_until_done()
    assert all(f.result().generated_tokens <= b for f, b in zip(futures, budgets))
    assert engine.prefills == prefills
