"""Work that a path claims to skip is never done: counted as the tokens that enter the backbone's
decoder layers. Equality with a re-encode cannot show this (a re-encode is what they compare with).

- ``encode(think=True)`` embeds from the generation cache (last-token head, in the continuous-batching
  engine or in static batches) or from the states captured while generating (TTE_u): over thinking
  alone it adds only the embedding step.
- Without thinking, or with given traces, it is one prefill; the TTE_u prefill stops at layer L-k.
- TwoModelTTE: the embedder encodes query + trace in one prefill per batch.
(A frozen encoder in GradCache is counted in test_gradcache.py.)
"""

from __future__ import annotations

import contextlib

import pytest
from helpers import random_pixels

from tte_fast.heads import find_decoder
from tte_fast.model import UnifiedTTE
from tte_fast.two_model import TwoModelTTE

THINK = 5
K = 2  # TTE_u head depth on the 4-layer tiny models

pytestmark = pytest.mark.usefixtures("one_thread")


def sample_inputs(vision: bool) -> list:
    if not vision:
        return ["a short query", {"text": "a longer query about cats", "instruction": "Find it."}, "mid"]
    return [
        {"image": random_pixels(0, 60, 90), "text": "what is shown"},
        "a text-only query about a red car",
        {"image": random_pixels(1, 130, 40), "instruction": "Find a caption."},
    ]


@contextlib.contextmanager
def layer_inputs(hf_model, index: int = 0):
    """[B, t] of the hidden states decoder layer ``index`` ran over, one entry per completed call.
    Layer 0's inputs are counted where the decoder stack makes their rotary tables, which
    transformers' stack and the fused decoder (``tte_fast.runtime.fused_decoder``) both do once per
    forward; a later layer's at its attention output projection (transformers' layers only)."""
    decoder = find_decoder(hf_model)
    module = decoder.rotary_emb if index == 0 else decoder.layers[index].self_attn.o_proj

    def record(module, args, output):
        calls.append(tuple(args[0].shape[:2]))

    calls: list[tuple[int, int]] = []
    handle = module.register_forward_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    """(model type, head) -> UnifiedTTE, loaded once per module."""
    cache = {}

    def get(model_type, head):
        if (model_type, head) not in cache:
            layers = K if head == "tte_u" else None
            path = tiny_checkpoints[model_type]
            cache[model_type, head] = UnifiedTTE.from_pretrained(
                path, device="cpu", head=head, head_layers=layers
            )
        return cache[model_type, head]

    return get


# The last-token head embeds through the continuous-batching engine (default) or static batches;
# the TTE_u head always embeds in static batches.
@pytest.mark.parametrize(
    "head,scheduler", [("last_token", "continuous"), ("last_token", "static"), ("tte_u", "static")]
)
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2"])
def test_thinking_then_embedding_adds_only_the_embedding_step(models, model_type, head, scheduler):
    model = models(model_type, head)
    inputs = sample_inputs(model.vision)
    with layer_inputs(model.hf_model) as thinking:
        traces = model.think(inputs, max_think_tokens=THINK, batch_size=3, scheduler=scheduler)
    with layer_inputs(model.hf_model) as encoding:
        result = model.encode(inputs, max_think_tokens=THINK, batch_size=3, scheduler=scheduler)
    assert result.traces == traces
    rows = len(inputs)
    assert encoding[0] == thinking[0]  # one prefill over the same prompts
    assert encoding[1:] == [(rows, 1)] * (len(encoding) - 1)  # then one token per row and step
    # Over thinking alone: the step that feeds each row's last sampled token (thinking never feeds it,
    # nothing reads its logits) and the embedding-token step. Nothing is encoded again.
    assert len(thinking) <= len(encoding) <= len(thinking) + 2
    assert max(len(seq) for seq in result.sequences) <= encoding[0][1] + len(encoding) - 1


@pytest.mark.parametrize("head", ["last_token", "tte_u"])
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2"])
def test_without_thinking_one_prefill(models, model_type, head):
    """No thinking, or given traces: one forward over prompt (+ trace) + embedding token per batch;
    the TTE_u prefill never reaches the backbone's last k layers (the head replaces them)."""
    model = models(model_type, head)
    inputs = sample_inputs(model.vision)
    traces = ["<think>\nsome given reasoning</think>\nan answer"] * len(inputs)
    for kwargs in ({"think": False}, {"traces": traces}):
        with layer_inputs(model.hf_model) as first, layer_inputs(model.hf_model, index=-K) as last_k:
            result = model.encode(inputs, batch_size=3, **kwargs)
        assert len(first) == 1 and first[0] == (len(inputs), max(len(seq) for seq in result.sequences))
        assert len(last_k) == (0 if head == "tte_u" else 1)


def test_two_model_embedder_encodes_query_and_trace_in_one_prefill(tiny_checkpoints, models):
    """The reasoner decodes; the embedder runs once per batch over the finished sequences."""
    reasoner = models("qwen2", "last_token")
    embedder = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    inputs = sample_inputs(False)
    with layer_inputs(reasoner.hf_model) as reasoning, layer_inputs(embedder.hf_model) as embedding:
        result = TwoModelTTE(reasoner, embedder).encode(inputs, max_think_tokens=THINK, batch_size=3)
    assert embedding == [(len(inputs), max(len(seq) for seq in result.sequences))]
    assert reasoning[1:] == [(len(inputs), 1)] * (len(reasoning) - 1)  # prefill, then decode steps only
    assert len(reasoning) <= THINK
