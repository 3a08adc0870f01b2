"""Position ids as HF ``generate`` builds them, M-RoPE included.

Text positions are ``cumsum(mask) - 1``; Qwen-VL models use M-RoPE, ``position_ids`` of shape
``[4, B, L]`` (the text row, then three rows from the model's ``get_rope_index``); a decode step's
three M-RoPE rows are the text position plus the row's ``rope_deltas``.

A batch that carries ``SEQUENTIAL_POSITIONS`` (True) gets text positions in every M-RoPE row, image
tokens included, and no deltas: how checkpoints trained with plain sequential positions (VLM2Vec,
whose prompts lack the ``<|vision_start|>`` its ``get_rope_index`` looks for) are run.
"""

from __future__ import annotations

import inspect

import torch

# Batch key (a bool, not a model input): positions 0, 1, 2, ... for every token, images included.
SEQUENTIAL_POSITIONS = "sequential_positions"


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF's text positions for a left-padded batch: ``cumsum(mask) - 1``, 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def uses_mrope(hf_model) -> bool:
    return hasattr(getattr(hf_model, "model", None), "get_rope_index")


def prefill_position_ids(hf_model, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids for a left-padded prompt batch and the per-row M-RoPE deltas (None without M-RoPE)."""
    mask = batch["attention_mask"]
    text = text_position_ids(mask)
    if not uses_mrope(hf_model):
        return text, None
    has_vision = batch.get("image_grid_thw") is not None or batch.get("video_grid_thw") is not None
    if has_vision and not batch.get(SEQUENTIAL_POSITIONS):
        get_rope_index = hf_model.model.get_rope_index
        accepted = inspect.signature(get_rope_index).parameters
        kwargs = {
            k: batch[k]
            for k in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
            if k in accepted and batch.get(k) is not None
        }
        vision, deltas = get_rope_index(batch["input_ids"], attention_mask=mask, **kwargs)
    else:
        vision = text.unsqueeze(0).expand(3, -1, -1)
        deltas = torch.zeros(mask.shape[0], 1, dtype=torch.long, device=mask.device)
    return torch.cat([text.unsqueeze(0), vision.to(text.device)], dim=0), deltas.to(text.device)


def decode_position_ids(text_pos: torch.Tensor, deltas: torch.Tensor | None) -> torch.Tensor:
    """``[B, 1]`` positions, or ``[4, B, 1]`` (text, then text + rope delta three times) with M-RoPE."""
    pos = text_pos.view(-1, 1)
    if deltas is None:
        return pos
    return torch.stack([pos, pos + deltas, pos + deltas, pos + deltas], dim=0)
