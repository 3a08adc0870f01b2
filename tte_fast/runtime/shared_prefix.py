"""Prefill of left-padded prompts that begin alike: their shared first tokens once, then each
prompt's rest onto a copy of that cache.

The prompts of one admission usually share a system prompt and the instruction before the query;
a padded prefill computes those tokens once per prompt. Here the shared prefix (the longest common
run of token ids at the start of every prompt, cut before the first vision token and one token
before the shortest prompt's end) runs once as a batch of one; its keys and values are repeated for
every row, and the rows' remaining tokens run as one left-padded batch onto them (the mask covers
the prefix, then each row's padding and tail). Positions come from the whole prompts, so M-RoPE
positions of pictures in the tails are the plain prefill's. The result is the plain prefill's: each
prompt's last hidden state and its keys and values (the prefix's columns, then its tail's).
"""

from __future__ import annotations

import torch

# Shorter shared prefixes are not worth a second forward.
MIN_SHARED_TOKENS = 16
VISION_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id")


def vision_token_ids(config) -> set[int]:
    """Token ids that start or hold a picture or video (a prefix stops before them)."""
    ids = set()
    for source in (config, getattr(config, "text_config", None)):
        for key in VISION_TOKEN_KEYS:
            value = getattr(source, key, None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
    return ids


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, stop_ids: set[int]) -> int:
    """Tokens every left-padded row begins with (0 when under ``MIN_SHARED_TOKENS`` or one row)."""
    lengths = attention_mask.sum(-1)
    if input_ids.shape[0] < 2:
        return 0
    width, shortest = input_ids.shape[1], int(lengths.min())
    starts = width - lengths
    columns = starts[:, None] + torch.arange(shortest - 1, device=input_ids.device)  # keep a last token
    heads = input_ids.gather(1, columns)
    same = (heads == heads[:1]).all(0)
    if stop_ids:
        same &= ~torch.isin(heads[0], torch.tensor(sorted(stop_ids), device=input_ids.device))
    shared = int(same.long().cumprod(0).sum())
    return shared if shared >= MIN_SHARED_TOKENS else 0


def split_batch(input_ids, attention_mask, positions, shared: int):
    """The prefix's ids ``[1, P]`` and positions, and the tails' ids ``[B, S]``, the mask over prefix
    and tails ``[B, P + S]``, their positions, and each row's columns in the prefilled cache."""
    width = input_ids.shape[1]
    lengths = attention_mask.sum(-1)
    start = int(width - lengths[0])
    prefix_ids = input_ids[:1, start : start + shared]
    prefix_positions = positions[..., :1, start : start + shared]
    tails = lengths - shared
    span = int(tails.max())
    tail_ids = input_ids[:, width - span :]
    tail_mask = torch.arange(span, device=input_ids.device)[None, :] >= (span - tails)[:, None]
    prefix_mask = attention_mask.new_ones(input_ids.shape[0], shared)
    mask = torch.cat([prefix_mask, tail_mask.to(attention_mask.dtype)], 1)
    device, end = input_ids.device, shared + span
    prefix = torch.arange(shared, device=device)
    columns = [torch.cat([prefix, torch.arange(end - n, end, device=device)]) for n in tails.tolist()]
    return prefix_ids, prefix_positions, tail_ids, mask, positions[..., width - span :], columns
