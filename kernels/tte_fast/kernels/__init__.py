"""Fused kernels of tte_fast (installed as ``tte_fast.kernels``).

Every entry point checks its inputs once, then dispatches: ``backend=None`` picks the Triton kernels
on CUDA and the chunked plain-torch path elsewhere; ``"triton"``, ``"torch"`` and ``"reference"``
force one path (``"triton"`` runs on CPU tensors only under ``TRITON_INTERPRET=1``). Triton is
imported only when its backend is used, so the CPU paths work without it.
"""

from __future__ import annotations

import torch

from tte_fast.profiling import ranged

from .decode_attention import decode_attention
from .indexing import last_token_index
from .infonce_torch import InfoNCETorch, infonce_forward_backward_torch
from .pool_normalize_torch import pool_normalize_torch
from .reference import infonce_loss_reference, pool_normalize_reference
from .validation import check_infonce_inputs, check_pool_inputs, resolve_backend

__all__ = ["decode_attention", "infonce_loss", "infonce_loss_and_grads", "last_token_index", "pool_normalize"]


@ranged("pool_normalize")
def pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor, backend: str | None = None):
    """L2-normalised hidden state of each row's last real token: float32 [B, D], differentiable
    w.r.t. ``hidden``. ``hidden`` is [B, T, D]; ``attention_mask`` [B, T] of 0/1, padded on either
    side (rows may differ)."""
    check_pool_inputs(hidden, attention_mask)
    backend = resolve_backend(backend, hidden.device)
    if backend == "triton":
        from .pool_normalize_triton import pool_normalize_triton

        return pool_normalize_triton(hidden, attention_mask)
    if backend == "torch":
        return pool_normalize_torch(hidden, attention_mask)
    return pool_normalize_reference(hidden, attention_mask).float()


@ranged("loss")
def infonce_loss(
    q: torch.Tensor,
    c: torch.Tensor,
    temperature: float = 0.02,
    labels: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Mean over queries of the cross-entropy of ``q @ c.T / temperature`` against ``labels``
    (default: query i's positive is candidate ``i * (Nc // Nq)``, Nc a multiple of Nq). Float32
    scalar, differentiable w.r.t. ``q`` and ``c``; the fast paths never hold the Nq x Nc logits."""
    temperature, labels = check_infonce_inputs(q, c, temperature, labels)
    backend = resolve_backend(backend, q.device)
    if backend == "triton":
        from .infonce_triton import InfoNCETriton

        return InfoNCETriton.apply(q, c, temperature, labels)
    if backend == "torch":
        return InfoNCETorch.apply(q, c, temperature, labels)
    return infonce_loss_reference(q, c, temperature, labels).float()


@ranged("loss")
def infonce_loss_and_grads(
    q: torch.Tensor,
    c: torch.Tensor,
    temperature: float = 0.02,
    labels: torch.Tensor | None = None,
    backend: str | None = None,
):
    """(loss, grad_q, grad_c) of the mean InfoNCE loss in one call, without autograd: ``loss`` is a
    detached float32 scalar, the gradients have the shape and dtype of ``q`` and ``c``."""
    temperature, labels = check_infonce_inputs(q, c, temperature, labels)
    backend = resolve_backend(backend, q.device)
    if backend == "triton":
        from .infonce_triton import infonce_forward_backward_triton

        return infonce_forward_backward_triton(q, c, temperature, labels)
    if backend == "torch":
        return infonce_forward_backward_torch(q, c, temperature, labels)
    with torch.enable_grad():
        q_leaf = q.detach().requires_grad_(True)
        c_leaf = c.detach().requires_grad_(True)
        loss = infonce_loss_reference(q_leaf, c_leaf, temperature, labels)
        grad_q, grad_c = torch.autograd.grad(loss, (q_leaf, c_leaf))
    return loss.detach().float(), grad_q, grad_c
