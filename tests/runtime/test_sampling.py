"""Sampled decoding draws from the distribution HF's logits warpers give (temperature, then top-k,
then top-p), and the seed decides the trace: the same seed repeats it, another seed changes it.

The distribution is read where the decoder draws from it (``torch.multinomial``), so a decoder that
stops sampling (an argmax in its place) or filters differently fails here, not only one that
ignores the seed."""

from __future__ import annotations

import pytest
import torch
from helpers import random_pixels
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tte_fast.model import UnifiedTTE
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.sampling import greedy_tokens, pick_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

# (temperature, top_k, top_p): each filter alone, top-k past the vocabulary, and all three at once.
SETTINGS = [
    (0.7, 0, 1.0),
    (1.0, 5, 1.0),
    (1.0, 0, 0.8),
    (2.0, 0, 0.5),
    (1.3, 40, 1.0),
    (1.0, 1000, 0.95),
    (1.5, 20, 0.9),
    (0.5, 3, 0.7),
]


def hf_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities after HF's warpers, in the order ``generate`` applies them."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    dummy_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    return warpers(dummy_ids, logits.clone()).softmax(-1)


class DrawSpy:
    """Wraps ``torch.multinomial``: records every distribution the decoder draws from, as [rows, V]."""

    def __init__(self, monkeypatch):
        self.real, self.probs = torch.multinomial, []
        monkeypatch.setattr(torch, "multinomial", self)

    def __call__(self, probs, *args, **kwargs):
        self.probs.append(probs.detach().clone().view(-1, probs.shape[-1]))
        return self.real(probs, *args, **kwargs)

    def rows(self) -> torch.Tensor:
        assert self.probs, "the decoder never sampled"
        return torch.cat(self.probs)


def assert_same_distribution(ours: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(ours > 0, expected > 0), "a different set of tokens survives the filters"
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_drawn_distribution_equals_hf_warpers(temperature, top_k, top_p, monkeypatch):
    logits = 3 * torch.randn(6, 512, generator=torch.Generator().manual_seed(top_k + int(100 * top_p)))
    options = DecodeOptions(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    expected = hf_probs(logits, temperature, top_k, top_p)
    if top_k or top_p < 1:
        assert (expected == 0).any(1).all(), "the case must filter something in every row"
    spy = DrawSpy(monkeypatch)
    tokens = pick_tokens(logits, options, None)
    assert_same_distribution(spy.rows(), expected)
    assert (expected.gather(1, tokens[:, None]) > 0).all()  # drawn from what survives


def test_bfloat16_logits_are_warped_in_float32(monkeypatch):
    """A decode step's logits come in the head's dtype; the warpers run on their float32 copy, as
    HF's ``generate`` does (in bfloat16, temperature and softmax would round differently)."""
    logits = (3 * torch.randn(4, 512, generator=torch.Generator().manual_seed(5))).bfloat16()
    options = DecodeOptions(do_sample=True, temperature=0.7, top_k=40, top_p=0.9)
    spy = DrawSpy(monkeypatch)
    pick_tokens(logits, options, None)
    drawn = spy.rows()
    assert drawn.dtype == torch.float32
    assert_same_distribution(drawn, hf_probs(logits.float(), 0.7, 40, 0.9))


def test_draws_follow_the_distribution(monkeypatch):
    """20,000 draws from one filtered row: frequencies within 5 standard errors of HF's probabilities."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -6.0]]).expand(20_000, -1)
    options = DecodeOptions(do_sample=True, temperature=0.9, top_k=6, top_p=0.95)
    expected = hf_probs(logits[:1], 0.9, 6, 0.95)[0]
    torch.manual_seed(0)
    tokens = pick_tokens(logits, options, None)
    freq = torch.bincount(tokens, minlength=8).double() / tokens.numel()
    stderr = (expected * (1 - expected) / tokens.numel()).sqrt().double()
    assert (freq[expected == 0] == 0).all()
    assert ((freq - expected.double()).abs() <= 5 * stderr + 1e-12).all(), (freq, expected)


@pytest.fixture(scope="module")
def model(tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")


INPUTS = ["a short query", "a somewhat longer query about cats", "mid"]


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_encode_samples_from_the_hf_distribution_at_every_step(model, scheduler, monkeypatch):
    """Through ``encode``: every draw is from HF's warped distribution of the logits the LM head gave
    at some step (matched to the nearest such row: the rows of different steps are far apart)."""
    logits_rows = []
    hook = model.hf_model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: logits_rows.append(out.detach().float().reshape(-1, out.shape[-1]))
    )
    spy = DrawSpy(monkeypatch)
    try:
        options = {"do_sample": True, "temperature": 0.8, "top_k": 30, "top_p": 0.9, "seed": 5}
        model.encode(INPUTS, max_think_tokens=4, scheduler=scheduler, **options)
    finally:
        hook.remove()
    candidates = hf_probs(torch.cat(logits_rows), 0.8, 30, 0.9)
    drawn = spy.rows()
    # A draw per generated token (static batches also draw for rows that have stopped).
    assert len(drawn) >= len(INPUTS) * 4
    nearest = (drawn[:, None, :] - candidates[None]).abs().amax(-1).argmin(1)
    assert_same_distribution(drawn, candidates[nearest])


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_seed_decides_the_trace(model, scheduler):
    sampled = {"do_sample": True, "temperature": 1.0, "top_k": 50, "scheduler": scheduler}
    first = model.think(INPUTS, max_think_tokens=6, seed=0, **sampled)
    assert model.think(INPUTS, max_think_tokens=6, seed=0, **sampled) == first
    other = model.think(INPUTS, max_think_tokens=6, seed=1, **sampled)
    assert all(a != b for a, b in zip(first, other)), "another seed gave the same trace"
    greedy = model.think(INPUTS, max_think_tokens=6, scheduler=scheduler)
    assert all(a != b for a, b in zip(first, greedy)), "sampling gave the greedy trace"


def test_sampling_from_the_top_one_is_the_argmax_without_a_draw(vl_model, monkeypatch):
    """Qwen-VL's generation_config samples with top_k=1 (and top_p=0.001): HF's warpers leave one
    token, so the pick is the argmax and no distribution is built or drawn from, in either scheduler."""
    logits = 3 * torch.randn(6, 512, generator=torch.Generator().manual_seed(0))
    qwen = dict(do_sample=True, temperature=0.01, top_k=1, top_p=0.001)
    expected = hf_probs(logits, qwen["temperature"], qwen["top_k"], qwen["top_p"])
    assert ((expected > 0).sum(-1) == 1).all()
    spy = DrawSpy(monkeypatch)
    tokens = pick_tokens(logits, DecodeOptions(**qwen), None)
    assert torch.equal(tokens, expected.argmax(-1))
    inputs = ["a red car", {"text": "a cat", "image": random_pixels(1, 40, 56)}]
    greedy = vl_model.encode(inputs, think=True, max_think_tokens=4)
    for scheduler in ("continuous", "static"):
        sampled = vl_model.encode(inputs, think=True, max_think_tokens=4, scheduler=scheduler, **qwen)
        assert [s.tolist() for s in sampled.sequences] == [s.tolist() for s in greedy.sequences]
    assert spy.probs == []


@pytest.mark.parametrize("vocab", [7, 1024, 3000, 151669])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_are_torch_argmax(vocab, dtype):
    """The two-pass CPU argmax picks what torch.argmax picks: ties to the first index (within a chunk
    and across chunks), NaN as the maximum, the last partial chunk included."""
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(9, vocab, generator=gen).to(dtype)
    logits[1] = 0.0  # all tied: index 0
    top = logits[2].max()
    logits[2, [vocab // 2, vocab - 1]] = top + 1  # a tie across chunks: the first one
    logits[3, vocab - 1] = 50.0  # the maximum in the last (partial) chunk
    logits[4, vocab // 3] = float("nan")
    logits[4, vocab - 1] = float("nan")
    assert torch.equal(greedy_tokens(logits), logits.argmax(-1))
    assert greedy_tokens(logits)[3] == vocab - 1
