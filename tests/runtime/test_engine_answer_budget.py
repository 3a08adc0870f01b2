"""The answer budget after ``</think>`` (``max_answer_tokens``), which tiny random models never reach
on their own (they never close ``</think>``): an LM head hook makes chosen inputs close it at chosen
steps, and the continuous engine and static batches must then stop each of them exactly
``max_answer_tokens`` tokens after it (0: right at it), with the same traces, sequences and
embeddings, and the other inputs at their think budget."""

from __future__ import annotations

import pytest
import torch
from helpers import check_schedulers_agree, engine_inputs, generated, run_engine

from tte_fast.model import UnifiedTTE

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # float32 tiny model
THINK = 5
# input -> the step at which it samples </think> (4: the last think step); inputs 4 and 5 never do.
CLOSE_AT = {0: 0, 1: 4, 2: 2, 3: 1}


class CloseThinkOn:
    """LM head forward hook: a row whose greedy token is one of ``triggers`` gets ``</think>``
    instead. The triggers are tokens the plain model samples, so the row closes where it would have
    sampled one, whichever batch or slot it runs in."""

    def __init__(self, think_end: int, triggers: set[int]):
        self.think_end, self.triggers = think_end, torch.tensor(sorted(triggers))

    def __call__(self, module, args, logits):
        hit = torch.isin(logits.argmax(-1), self.triggers)
        out = logits.clone()
        out[..., self.think_end] = torch.where(hit, logits.amax(-1) + 100.0, logits[..., self.think_end])
        return out


@pytest.fixture(scope="module")
def closing(tiny_checkpoints):
    """A tiny Qwen2-VL whose LM head closes </think> where CLOSE_AT says, and the plain model's
    greedy tokens per input."""
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
    inputs = engine_inputs(model)
    plain = [generated(r) for r in run_engine(model, inputs, 3, embed=False, max_think_tokens=THINK)]
    assert all(len(p) == THINK and model.think_end_token_id not in p for p in plain)
    triggers = {plain[i][k] for i, k in CLOSE_AT.items()}
    # Each input reaches its first trigger where planned (and the others none at all).
    for i, tokens in enumerate(plain):
        first = next((k for k, t in enumerate(tokens) if t in triggers), None)
        assert first == CLOSE_AT.get(i), f"input {i}: a trigger at step {first}"
    hook = CloseThinkOn(model.think_end_token_id, triggers)
    handle = model.hf_model.get_output_embeddings().register_forward_hook(hook)
    yield model, plain
    handle.remove()


def check_answers(model, plain, tokens: list[list[int]], answer: int) -> None:
    """Input i's generated tokens: its plain tokens up to CLOSE_AT[i], </think>, then exactly
    ``answer`` tokens; an input that never closes keeps its THINK plain tokens."""
    for i, got in enumerate(tokens):
        if i not in CLOSE_AT:
            assert got == plain[i], f"input {i}"
            continue
        k = CLOSE_AT[i]
        assert got[: k + 1] == plain[i][:k] + [model.think_end_token_id], f"input {i}"
        assert len(got) - (k + 1) == answer, f"input {i}: {len(got) - k - 1} tokens after </think>"


@pytest.mark.parametrize("answer", [0, 1, 2])
@pytest.mark.parametrize("slots", [1, 4])
def test_embedding_stops_answer_budget_tokens_after_think_end(closing, answer, slots):
    model, plain = closing
    inputs = engine_inputs(model)
    budgets = dict(max_think_tokens=THINK, max_answer_tokens=answer)
    results = run_engine(model, inputs, slots, embed=True, **budgets)
    check_answers(model, plain, [generated(r) for r in results], answer)
    for i, r in enumerate(results):
        assert r.stop_reason == ("answer_budget" if i in CLOSE_AT else "think_budget"), f"input {i}"
        assert r.generated_tokens == len(generated(r))

    check_schedulers_agree(model, inputs, results, slots, atol=ATOL, **budgets)


@pytest.mark.parametrize("answer", [0, 1, 2])
def test_thinking_alone_stops_answer_budget_tokens_after_think_end(closing, answer):
    model, plain = closing
    inputs = engine_inputs(model)
    budgets = dict(max_think_tokens=THINK, max_answer_tokens=answer)
    results = run_engine(model, inputs, 2, embed=False, **budgets)
    check_answers(model, plain, [generated(r) for r in results], answer)
    assert [r.stop_reason for r in results] == [
        "answer_budget" if i in CLOSE_AT else "think_budget" for i in range(len(inputs))
    ]
    static = model.think(inputs, batch_size=4, scheduler="static", **budgets)
    assert model.think(inputs, batch_size=2, **budgets) == static == [r.trace for r in results]
