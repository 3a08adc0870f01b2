"""HF's repetition penalty in both schedulers, and ``generation="checkpoint"``.

- The mask-based penalty against transformers' ``RepetitionPenaltyLogitsProcessor`` on random
  logits and ids (float32, bit for bit), with padding, sampled tokens and per-row penalties.
- Static batches and the engine (1 and 3 slots) against HF ``generate(repetition_penalty=...)``
  on the tiny text model and the tiny Qwen2-VL with images; slots of different penalties side by side.
- A penalty of 1.0 runs no penalty code at all.
- ``generation="checkpoint"`` reads ``generation_config.json`` as passing the same options does.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import engine_inputs, generated, hf_greedy, run_engine
from transformers import RepetitionPenaltyLogitsProcessor

import tte_fast.runtime.sampling as sampling
from tte_fast.inputs import check_input
from tte_fast.model import UnifiedTTE
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.sampling import SeenTokens
from tte_fast.settings.params import EncodeParams

pytestmark = pytest.mark.usefixtures("one_thread")

THINK = 8
PENALTIES = [1.05, 1.5]


# ------------------------------------------------------------------------ the processor itself
def hf_penalised(logits: torch.Tensor, ids: list[list[int]], penalty: float) -> torch.Tensor:
    """HF's processor, one row at a time over that row's ids (rows differ in length)."""
    processor = RepetitionPenaltyLogitsProcessor(penalty)
    rows = [processor(torch.tensor([row]), logits[r : r + 1].clone()) for r, row in enumerate(ids)]
    return torch.cat(rows)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("penalty", [1.05, 1.5, 0.7])
def test_penalty_is_hf_processor_bit_for_bit(seed, penalty):
    """Left-padded prompts with repeated ids, then two sampled tokens: the same float32 logits."""
    gen = torch.Generator().manual_seed(seed)
    rows, width, vocab = 5, 12, 40
    logits = torch.randn(rows, vocab, generator=gen) * 3
    ids = torch.randint(0, vocab, (rows, width), generator=gen)
    mask = torch.ones(rows, width, dtype=torch.long)
    for r in range(rows):
        mask[r, : r * 2] = 0  # left padding whose ids must not count
    seen = SeenTokens(rows, vocab, "cpu")
    seen.start(list(range(rows)), ids, mask, penalty)
    prompts = [ids[r][mask[r].bool()].tolist() for r in range(rows)]
    assert torch.equal(seen.apply(logits), hf_penalised(logits, prompts, penalty))
    for _ in range(2):
        tokens = torch.randint(0, vocab, (rows,), generator=gen)
        seen.record(tokens)
        prompts = [p + [int(t)] for p, t in zip(prompts, tokens)]
        assert torch.equal(seen.apply(logits), hf_penalised(logits, prompts, penalty))


def test_penalty_of_bfloat16_logits_is_applied_in_float32():
    """A decode step's logits come in the head's dtype; HF penalises their float32 copy, bit for bit
    what ``apply`` returns (in bfloat16 the division and product would round)."""
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 64, generator=gen) * 3).bfloat16()
    ids = torch.randint(0, 64, (3, 20), generator=gen)
    seen = SeenTokens(3, 64, "cpu")
    seen.start([0, 1, 2], ids, torch.ones(3, 20), 1.3)
    got = seen.apply(logits)
    assert got.dtype == torch.float32
    assert torch.equal(got, hf_penalised(logits.float(), ids.tolist(), 1.3))


def test_per_row_penalties_on_a_subset_of_rows():
    """Engine use: rows with their own penalties (1.0: untouched), logits for some rows only."""
    gen = torch.Generator().manual_seed(0)
    vocab, penalties = 30, [1.3, 1.0, 2.0, 1.3]
    seen = SeenTokens(len(penalties), vocab, "cpu")
    ids = torch.randint(0, vocab, (len(penalties), 9), generator=gen)
    for r, penalty in enumerate(penalties):
        seen.start([r], ids[r : r + 1], torch.ones(1, 9), penalty)
    tokens = torch.randint(0, vocab, (len(penalties),), generator=gen)
    rows = [3, 1, 2]
    untouched = seen.mask[0].clone()
    seen.record(tokens, rows)
    logits = torch.randn(len(rows), vocab, generator=gen)
    got = seen.apply(logits, rows)
    for k, r in enumerate(rows):
        row_ids = [ids[r].tolist() + [int(tokens[r])]]
        want = hf_penalised(logits[k : k + 1], row_ids, penalties[r]) if penalties[r] != 1.0 else logits[k]
        assert torch.equal(got[k : k + 1].view(-1), want.view(-1)), r
    assert torch.equal(seen.mask[0], untouched)  # row 0 sampled nothing


@pytest.mark.parametrize("bad", [0, 0.0, -1.05, True, False, math.nan, math.inf, "1.05", None])
def test_a_bad_penalty_is_a_value_error_naming_it(vl_model, bad):
    with pytest.raises(ValueError, match="repetition_penalty"):
        DecodeOptions(repetition_penalty=bad)
    with pytest.raises(ValueError, match="repetition_penalty"):
        vl_model.decode_options(repetition_penalty=bad)
    if bad is None:  # EncodeParams' None leaves the penalty to the model's generation source
        assert "repetition_penalty" not in EncodeParams(repetition_penalty=None).decode_kwargs()
        return
    with pytest.raises(ValueError, match="repetition_penalty"):
        EncodeParams(repetition_penalty=bad)


# ------------------------------------------------------------------- both schedulers against HF


class EchoLastToken:
    """Forward hooks that make the model repeat itself: the token a row was last fed gets a logit 2%
    above the row's top one. A tiny random model never repeats a token and its top logits lie far
    apart, so without these no penalty would change a pick; with them every penalty above 1.02 does
    (the first pick echoes the prompt's last token, so the prompt's ids must count too)."""

    def __init__(self, model):
        self.fed = None
        self.handles = [
            model.hf_model.get_input_embeddings().register_forward_pre_hook(self.record),
            model.hf_model.get_output_embeddings().register_forward_hook(self.echo),
        ]

    def record(self, module, args):
        self.fed = args[0][:, -1]

    def echo(self, module, args, logits):
        top = logits.amax(-1, keepdim=True)
        above = torch.where(top > 0, top * 1.02, top * 0.98)
        fed = self.fed.view(-1, *[1] * (logits.dim() - 1)).expand(*logits.shape[:-1], 1)
        return logits.scatter(-1, fed, above)

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module", params=["qwen2", "qwen2_vl"])
def penalised(request, tiny_checkpoints):
    """(model, inputs, {penalty: HF's tokens per input}, prompts) under ``EchoLastToken``; penalty
    1.0 is plain greedy (it only repeats)."""
    model = UnifiedTTE.from_pretrained(tiny_checkpoints[request.param], device="cpu")
    hooks = EchoLastToken(model)
    inputs = engine_inputs(model)
    streams, prompts = {}, None
    for penalty in [1.0] + PENALTIES:
        runs = [hf_greedy(model, i, x, THINK, repetition_penalty=penalty) for i, x in enumerate(inputs)]
        streams[penalty] = [tokens for tokens, _ in runs]
        prompts = [prompt for _, prompt in runs]
    assert all(len(set(s)) == 1 for s in streams[1.0])  # unpenalised, the hooks make rows repeat
    for penalty in PENALTIES:
        assert all(len(set(s)) > 1 for s in streams[penalty]), penalty
    assert all(len(s) == THINK for p in streams.values() for s in p)  # no EOS: every budget runs out
    yield model, inputs, streams, prompts
    hooks.remove()


@pytest.mark.parametrize("penalty", PENALTIES)
def test_static_batches_equal_hf_generate(penalised, penalty):
    model, inputs, streams, prompts = penalised
    out = model.encode(
        inputs,
        think=True,
        batch_size=4,
        scheduler="static",
        max_think_tokens=THINK,
        repetition_penalty=penalty,
    )
    for i, sequence in enumerate(out.sequences):
        assert sequence.tolist() == prompts[i] + streams[penalty][i] + [model.embed_token_id], f"input {i}"


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("slots", [1, 3])
def test_engine_equals_hf_generate(penalised, penalty, slots):
    model, inputs, streams, _ = penalised
    for embed in (False, True):
        results = run_engine(model, inputs, slots, embed, max_think_tokens=THINK, repetition_penalty=penalty)
        assert [generated(r) for r in results] == streams[penalty], f"embed={embed}"


def test_engine_slots_of_different_penalties(penalised):
    """Requests with and without a penalty share the slots (and reuse them): each is HF's."""
    model, inputs, streams, _ = penalised
    engine = model.engine(3)
    # Four penalties cycling over three slots: a slot's next request has another penalty (1.0 too).
    picks = [(1.0, *PENALTIES, PENALTIES[0])[i % 4] for i in range(2 * len(inputs))]
    futures = [
        engine.submit(
            check_input(i, inputs[i % len(inputs)]),
            model.decode_options(max_think_tokens=THINK, repetition_penalty=penalty),
            embed=False,
            index=i,
        )
        for i, penalty in enumerate(picks)
    ]
    engine.run_until_done()
    for i, (future, penalty) in enumerate(zip(futures, picks)):
        assert generated(future.result()) == streams[penalty][i % len(inputs)], (i, penalty)


def test_penalty_one_runs_no_penalty_code(tiny_checkpoints, monkeypatch):
    """At 1.0 neither scheduler builds a mask or penalises a logit; at 1.05 both do."""
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
    calls = {"penalize": 0, "SeenTokens": 0}
    penalize, init = sampling.penalize, SeenTokens.__init__

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(sampling, "penalize", counted("penalize", penalize))
    monkeypatch.setattr(SeenTokens, "__init__", counted("SeenTokens", init))
    inputs = engine_inputs(model)[:3]
    for scheduler in ("static", "continuous"):
        model.encode(inputs, think=True, scheduler=scheduler, max_think_tokens=3)
        assert calls == {"penalize": 0, "SeenTokens": 0}, scheduler
    assert model.engine(8).seen is None
    for scheduler in ("static", "continuous"):
        model.encode(inputs, think=True, scheduler=scheduler, max_think_tokens=3, repetition_penalty=1.05)
        assert calls["penalize"] > 0 and calls["SeenTokens"] > 0, scheduler
        calls.update(penalize=0, SeenTokens=0)


# ------------------------------------------------------------------------ generation="checkpoint"
def with_generation_config(tiny_checkpoints, tmp_path, **settings) -> str:
    """A copy of the tiny Qwen2-VL whose generation_config.json also sets ``settings``."""
    path = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoints["qwen2_vl"], path)
    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps({**config, **settings}))
    return str(path)


def test_checkpoint_generation_equals_passing_its_options(tiny_checkpoints, tmp_path):
    model = UnifiedTTE.from_pretrained(
        with_generation_config(tiny_checkpoints, tmp_path, repetition_penalty=1.3, do_sample=False),
        device="cpu",
    )
    EchoLastToken(model)  # so that the penalty changes the traces (the model is this test's own)
    options = model.decode_options(generation="checkpoint")
    assert (options.repetition_penalty, options.do_sample) == (1.3, False)
    assert model.decode_options(generation="checkpoint", repetition_penalty=1.0).repetition_penalty == 1.0
    assert model.decode_options().repetition_penalty == 1.0  # greedy unless asked
    inputs = engine_inputs(model)
    for scheduler in ("static", "continuous"):
        common = dict(think=True, scheduler=scheduler, max_think_tokens=THINK)
        from_checkpoint = [
            s.tolist() for s in model.encode(inputs, generation="checkpoint", **common).sequences
        ]
        passed = [s.tolist() for s in model.encode(inputs, repetition_penalty=1.3, **common).sequences]
        plain = [s.tolist() for s in model.encode(inputs, **common).sequences]
        assert from_checkpoint == passed != plain, scheduler
    with pytest.raises(ValueError, match="generation"):
        model.decode_options(generation="sampled")


def test_qwen_vl_generation_config_is_greedy_over_penalised_logits(tiny_checkpoints, tmp_path):
    """Qwen-VL's published settings (sampling with top_k 1): the traces of greedy with its penalty."""
    qwen = dict(do_sample=True, temperature=0.01, top_k=1, top_p=0.001, repetition_penalty=1.05)
    path = with_generation_config(tiny_checkpoints, tmp_path, **qwen)
    model = UnifiedTTE.from_pretrained(path, device="cpu")
    EchoLastToken(model)
    options = model.decode_options(generation="checkpoint")
    assert {name: getattr(options, name) for name in qwen} == qwen
    inputs = engine_inputs(model)
    greedy = model.think(inputs, max_think_tokens=THINK, repetition_penalty=1.05)
    assert greedy != model.think(inputs, max_think_tokens=THINK)
    for scheduler in ("static", "continuous"):
        assert (
            model.think(inputs, max_think_tokens=THINK, scheduler=scheduler, generation="checkpoint")
            == greedy
        )
