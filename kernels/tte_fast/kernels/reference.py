"""Naive plain-PyTorch references that the fast paths are tested against.

They materialise everything (the full logits matrix, a per-row Python loop for the last token), which
is what makes them easy to trust and the reason they are not used in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_index_reference(attention_mask: torch.Tensor) -> torch.Tensor:
    rows = [int(row.nonzero().max()) for row in attention_mask]
    return torch.tensor(rows, dtype=torch.int64, device=attention_mask.device)


def pool_normalize_reference(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Gather each row's last real token, then F.normalize (float32 at least, float64 stays float64)."""
    index = last_token_index_reference(attention_mask)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    return F.normalize(pooled.to(torch.promote_types(hidden.dtype, torch.float32)), dim=-1)


def infonce_loss_reference(
    q: torch.Tensor, c: torch.Tensor, temperature: float, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the full q @ c.T / temperature logits against labels."""
    dtype = torch.promote_types(torch.promote_types(q.dtype, c.dtype), torch.float32)
    logits = q.to(dtype) @ c.to(dtype).T / temperature
    return F.cross_entropy(logits, labels)
