"""Index of each row's last real token, for left, right or mixed padding."""

from __future__ import annotations

import torch

from .validation import check_mask_values


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Unchecked core of last_token_index, for callers that validated the mask already."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask != 0, positions, -1).amax(dim=1)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """LongTensor [B]: the position of the last non-zero entry of each mask row.

    Works for left padding (always T - 1), right padding (length - 1) and any mix of the two.
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    check_mask_values(attention_mask)
    return last_token_positions(attention_mask)
