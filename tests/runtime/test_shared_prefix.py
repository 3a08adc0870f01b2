"""The shared-prefix prefill: prompts that begin alike prefill their shared tokens once, with the
plain padded prefill's traces, sequences and embeddings (fp32), and fewer tokens computed."""

from __future__ import annotations

import pytest
import torch

from tte_fast.inputs import check_input
from tte_fast.model import UnifiedTTE
from tte_fast.runtime import shared_prefix
from tte_fast.runtime.engine import Engine
from tte_fast.runtime.shared_prefix import MIN_SHARED_TOKENS, shared_prefix_length, split_batch

pytestmark = pytest.mark.usefixtures("one_thread")

INSTRUCTION = "Find the passage that answers this question about the history and geography of old maps."
QUERIES = ["short", "a rather longer text about several different things at once", "x", "two words"]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2"])
def model(request, tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints[request.param], device="cpu")


def shared_inputs() -> list:
    """Text queries under one long instruction (Qwen2-VL's template puts a picture before the
    instruction, where a shared prefix stops: see the test of its length)."""
    return [{"text": q, "instruction": INSTRUCTION} for q in QUERIES]


def run(model, inputs, share_prefix: bool, slots: int = 4):
    engine = Engine(model, slots=slots, share_prefix=share_prefix)
    options = model.decode_options(max_think_tokens=5)
    futures = [engine.submit(check_input(i, x), options, index=i) for i, x in enumerate(inputs)]
    engine.run_until_done()
    return engine, [f.result() for f in futures]


def test_the_shared_prefix_prefill_equals_the_plain_one(model):
    inputs = shared_inputs()
    items = [check_input(i, x) for i, x in enumerate(inputs)]
    batch = model.batch_inputs(items, range(len(items)), "query", True, None, model.decode_options())
    ids, mask = batch["input_ids"], batch["attention_mask"]
    stops = shared_prefix.vision_token_ids(model.hf_model.config)
    shared = shared_prefix_length(ids, mask, stops)
    assert shared >= MIN_SHARED_TOKENS, "the instruction is shared"

    plain_engine, plain = run(model, inputs, share_prefix=False)
    engine, got = run(model, inputs, share_prefix=True)
    for a, b in zip(got, plain):
        assert a.sequence.tolist() == b.sequence.tolist() and a.trace == b.trace
        torch.testing.assert_close(a.embedding, b.embedding, atol=1e-5, rtol=0)
    # The work: the prefix once, then each row's tail padded to the longest tail.
    tails = int(mask.sum(-1).max()) - shared
    assert plain_engine.prefill_tokens == ids.numel()
    assert engine.prefill_tokens == shared + len(inputs) * tails < ids.numel()


def test_shared_prefix_length_stops_before_pictures_and_keeps_a_last_token():
    row = list(range(100, 140))
    ids = torch.tensor([[0, 0] + row[:30], row[:29] + [7, 8, 9]])
    mask = torch.tensor([[0, 0] + [1] * 30, [1] * 32])
    assert shared_prefix_length(ids, mask, set()) == 29
    assert shared_prefix_length(ids, mask, {100 + 20}) == 20  # a vision token at column 20
    assert shared_prefix_length(ids, mask, {100 + 10}) == 0  # under MIN_SHARED_TOKENS
    same = torch.tensor([row[:20], row[:20]])
    assert shared_prefix_length(same, torch.ones_like(same), set()) == 19  # each row keeps its last token
    assert shared_prefix_length(same[:1], torch.ones_like(same[:1]), set()) == 0  # one row: nothing shared


def test_split_batch_columns_cover_each_rows_tokens():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    prefix_ids, prefix_pos, tail_ids, tail_mask, tail_pos, columns = split_batch(ids, mask, positions, 3)
    assert prefix_ids.tolist() == [[5, 6, 7]] and prefix_pos.tolist() == [[0, 1, 2]]
    assert tail_ids.tolist() == [[6, 7, 8], [9, 9, 9]]
    assert tail_mask.tolist() == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    assert tail_pos.tolist() == [[1, 2, 3], [3, 4, 5]]
    assert [c.tolist() for c in columns] == [[0, 1, 2, 5], [0, 1, 2, 3, 4, 5]]
