"""Token choice: greedy argmax, or HF's warpers (temperature, top-k, top-p) and a draw; with a seed,
one generator per row seeded from the row's own prompt, so a trace does not depend on its batch."""

from __future__ import annotations

import hashlib

import torch

from tte_fast.prompting.chunking import split_inputs
from tte_fast.runtime.options import DecodeOptions


def row_generators(batch: dict, options: DecodeOptions) -> list[torch.Generator] | None:
    """With a seed, one generator per row seeded from (seed, the row's prompt and pixels): a row
    draws the same tokens whatever batch it lands in and wherever it sits."""
    if not (options.do_sample and options.seed is not None):
        return None
    device = batch["input_ids"].device
    generators = []
    for row in split_inputs(batch, 1):
        digest = hashlib.blake2b(str(options.seed).encode(), digest_size=8)
        digest.update(row["input_ids"][row["attention_mask"].bool()].cpu().numpy().tobytes())
        for key in ("pixel_values", "pixel_values_videos"):
            if row.get(key) is not None:
                digest.update(row[key].float().cpu().numpy().tobytes())
        seed = int.from_bytes(digest.digest(), "little") & (2**63 - 1)
        generators.append(torch.Generator(device=device).manual_seed(seed))
    return generators


def sampling_probs(logits: torch.Tensor, options: DecodeOptions) -> torch.Tensor:
    """[B, V] probabilities a sampled token is drawn from: temperature, then top-k, then top-p
    (the order of HF's logits warpers)."""
    scores = logits / options.temperature
    if options.top_k:
        kth = torch.topk(scores, min(options.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the top token always stays).
        drop_sorted = cumulative - sorted_scores.softmax(-1) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def pick_tokens(logits: torch.Tensor, options: DecodeOptions, generators) -> torch.Tensor:
    """Greedy argmax, or a sample from ``sampling_probs`` (one generator per real row when seeded;
    padding rows past them take the argmax)."""
    if not options.do_sample:
        return logits.argmax(-1)
    probs = sampling_probs(logits, options)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    tokens = probs.argmax(-1)
    for row, generator in enumerate(generators):
        tokens[row] = torch.multinomial(probs[row], 1, generator=generator)[0]
    return tokens
