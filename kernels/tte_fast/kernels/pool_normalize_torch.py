"""Plain-torch last-token pooling + L2 norm: gathers the B pooled rows first, so only [B, D] is ever
upcast; autograd routes the gradient back to the pooled positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .indexing import last_token_positions


def pool_normalize_torch(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    index = last_token_positions(attention_mask)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    return F.normalize(pooled.float(), dim=-1)
