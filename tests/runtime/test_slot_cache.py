"""The slot cache's growth: a request whose prompt and budget need more columns than the engine's
slots hold enters while others decode; the slots grow (``SlotCache.grow``, at that admission) and
every request, the ones in flight at the growth included, gives what a static batch gives."""

from __future__ import annotations

import pytest
import torch
from helpers import engine_inputs

from tte_fast.inputs import check_input
from tte_fast.runtime.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # float32 tiny model
LENGTH = 128  # slot columns at the start: enough for the first two requests, not for the third
ANSWER = 2  # a request needs prompt + max_think_tokens + max_answer_tokens + 1 columns


def submit(engine, model, index: int, item, budget: int):
    options = model.decode_options(max_think_tokens=budget, max_answer_tokens=ANSWER)
    return engine.submit(check_input(index, item), options, index=index)


@pytest.mark.parametrize("prefill_attention", ["padded", "sdpa_varlen"])
def test_growing_the_slots_keeps_the_requests_in_flight(vl_model, prefill_attention):
    model = vl_model
    inputs = engine_inputs(model)
    first = [(inputs[1], 6), (inputs[0], 10)]  # an image and a text, both fit LENGTH columns
    late = (inputs[2], 40)  # 92 prompt tokens + 40 + ANSWER + 1: more than LENGTH
    engine = Engine(model, slots=3, length=LENGTH, prefill_attention=prefill_attention)
    futures = [submit(engine, model, i, x, b) for i, (x, b) in enumerate(first)]
    for _ in range(3):
        engine.step()
    assert engine.cache.length == LENGTH and not any(f.done() for f in futures)
    futures.append(submit(engine, model, 2, *late))
    engine.run_until_done()
    results = [f.result() for f in futures]
    assert engine.cache.length > LENGTH
    # The growth came with the late request's admission, while the first two still decoded.
    assert all(r.finished_step > results[2].admitted_step for r in results[:2])
    for i, (item, budget) in enumerate(first + [late]):
        budgets = dict(max_think_tokens=budget, max_answer_tokens=ANSWER)
        want = model.encode([item], think=True, scheduler="static", **budgets)
        assert results[i].trace == want.traces[0], f"input {i}"
        assert results[i].sequence.tolist() == want.sequences[0].tolist(), f"input {i}"
        torch.testing.assert_close(results[i].embedding, want.embeddings[0], atol=ATOL, rtol=0)
