"""Chunked plain-torch InfoNCE: the CPU path.

One pass over query chunks computes the loss and both gradients: a chunk's logits row block
[chunk, Nc] is complete, so its softmax needs no online rescaling, and turning it into the logits
gradient in place lets the same block feed dq = dS @ c and dc += dS.T @ q. That is three matmuls,
as many as the naive autograd path, with peak extra memory of one [chunk, Nc] block instead of the
full Nq x Nc logits and their gradient.
"""

from __future__ import annotations

import torch

# Elements of one logits block (128 MiB in fp32). Fewer, larger chunks keep the three matmuls at full
# BLAS efficiency (the dc update's inner dimension is the chunk's row count): on a 2-core CPU at
# Nq = Nc = 8192, 256-row chunks cost ~1.6x the CPU time of 4096-row ones.
BLOCK_ELEMENTS = 1 << 25


def _chunk_rows(nq: int, nc: int) -> int:
    return max(1, min(nq, BLOCK_ELEMENTS // max(nc, 1)))


def _chunk_loss_and_grads(q_chunk, c_acc, labels, inv_t, grad_q_out, grad_c, grad_scale):
    """Loss sum of one query chunk; writes its dq rows and adds its share of dc. Kept in its own
    function so the [chunk, Nc] block is freed before the next chunk allocates one."""
    rows = torch.arange(q_chunk.shape[0], device=q_chunk.device)
    logits = torch.mm(q_chunk * inv_t, c_acc.T)
    positive = logits[rows, labels]
    row_max = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(row_max).exp_()
    sum_exp = probs.sum(dim=1, keepdim=True)
    loss_sum = (row_max.squeeze(1) + sum_exp.squeeze(1).log() - positive).sum()
    if grad_c is not None:
        # softmax - one_hot is the logits gradient (times 1 / (t * Nq), folded into the matmuls).
        grad_logits = probs.div_(sum_exp)
        grad_logits[rows, labels] -= 1.0
        torch.mm(grad_logits, c_acc, out=grad_q_out).mul_(grad_scale)
        grad_c.addmm_(grad_logits.T, q_chunk, alpha=grad_scale)
    return loss_sum


@torch.no_grad()
def infonce_forward_backward_torch(
    q: torch.Tensor, c: torch.Tensor, temperature: float, labels: torch.Tensor, need_grads: bool = True
):
    """Return (loss float32 scalar, grad_q, grad_c) of the mean InfoNCE loss; grads are None without
    need_grads. Accumulates in float32 (float64 inputs stay float64)."""
    nq, nc = q.shape[0], c.shape[0]
    acc = torch.promote_types(torch.promote_types(q.dtype, c.dtype), torch.float32)
    c_acc = c.to(acc)
    grad_q = torch.empty(q.shape, dtype=acc, device=q.device) if need_grads else None
    grad_c = torch.zeros(c.shape, dtype=acc, device=c.device) if need_grads else None
    loss = torch.zeros((), dtype=acc, device=q.device)
    step = _chunk_rows(nq, nc)
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        loss += _chunk_loss_and_grads(
            q[start:stop].to(acc),
            c_acc,
            labels[start:stop],
            1.0 / temperature,
            grad_q[start:stop] if need_grads else None,
            grad_c,
            1.0 / (temperature * nq),
        )
    loss = (loss / nq).float()
    if need_grads:
        grad_q = grad_q.to(q.dtype)
        grad_c = grad_c.to(c.dtype)
    return loss, grad_q, grad_c


class InfoNCETorch(torch.autograd.Function):
    """Autograd wrapper: forward already computes the gradients (the same three matmuls as the naive
    path), backward only scales them by the incoming scalar gradient.

    The gradients are handed over to autograd in place rather than copied, so a second backward
    through the same graph is refused with a clear error instead of silently reusing them.
    """

    @staticmethod
    def forward(ctx, q, c, temperature, labels):
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, grad_q, grad_c = infonce_forward_backward_torch(q, c, temperature, labels, need_grads=need)
        ctx.grads = (grad_q, grad_c) if need else None
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("infonce_loss (torch backend) supports one backward per forward")
        grad_q, grad_c = ctx.grads
        ctx.grads = None
        dq = grad_q.mul_(grad_loss.to(grad_q.dtype)) if ctx.needs_input_grad[0] else None
        dc = grad_c.mul_(grad_loss.to(grad_c.dtype)) if ctx.needs_input_grad[1] else None
        return dq, dc, None, None
