"""gradcache_step on the tiny Qwen2-VL fixture: images of different sizes (and none) in one batch.

Without dropout the reference is a single full-batch forward, so this also checks that chunks carry
exactly their own samples' patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.gradcache import gradcache_step
from tte_fast.kernels import pool_normalize

# fp32: relative error of the whole gradient (all parameters as one vector) below 1e-5. Single
# tensors get a looser bound: the full-batch and per-chunk matmuls round differently, and 1 / 0.02
# scales that rounding up 50x in the logits, which small, cancelling gradients (biases) feel most.
FP32_RTOL = 1e-5
FP32_RTOL_PER_TENSOR = 5e-5


@pytest.fixture(scope="module")
def qwen2_vl(tiny_checkpoints):
    from transformers import AutoModelForImageTextToText

    path = tiny_checkpoints["qwen2_vl"]
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).model.train()
    return model, load_processor(path, "qwen2_vl")


def make_batch(processor, specs, seed):
    """specs: per sample, (text, list of image (height, width))."""
    rng = np.random.default_rng(seed)
    texts, images = [], []
    for text, sizes in specs:
        content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": text}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False))
        images += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True)  # a BatchFeature


QUERIES = [
    ("a red square", [(56, 84)]),
    ("describe this", [(112, 56)]),
    ("text only query", []),
    ("two pictures", [(56, 56), (84, 112)]),
    ("tall", [(140, 56)]),
]
TARGETS = [
    ("target one", []),
    ("target two with more words", [(84, 84)]),
    ("three", []),
    ("four", [(56, 140)]),
    ("five", []),
]


@pytest.mark.parametrize("chunk,t_chunk", [(2, 3), (4, 1)])
def test_qwen2_vl_gradients_match_full_batch(qwen2_vl, chunk, t_chunk):
    model, processor = qwen2_vl
    queries, targets = make_batch(processor, QUERIES, 0), make_batch(processor, TARGETS, 1)
    assert (
        queries["image_grid_thw"].shape[0] == 5
        and len(set(map(tuple, queries["image_grid_thw"].tolist()))) > 2
    )

    def encoder(**inputs):
        hidden = model(**inputs).last_hidden_state
        return pool_normalize(hidden, inputs["attention_mask"])

    model.zero_grad(set_to_none=True)
    ref = F.cross_entropy(encoder(**queries) @ encoder(**targets).T / 0.02, torch.arange(5))
    ref.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any("visual" in n for n in want)
    model.zero_grad(set_to_none=True)

    loss = gradcache_step(encoder, queries, targets, chunk_size=chunk, target_chunk_size=t_chunk)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    diff = torch.cat([(got[n] - g).flatten() for n, g in want.items()])
    total = torch.cat([g.flatten() for g in want.values()])
    assert diff.norm() / total.norm() < FP32_RTOL
    for name, g in want.items():
        err = (got[name] - g).norm() / g.norm().clamp_min(1e-30)
        assert err < FP32_RTOL_PER_TENSOR, f"{name}: relative error {err:.2e}"
