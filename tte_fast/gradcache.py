"""GradCache: a contrastive (InfoNCE) training step whose memory is set by the chunk size.

``gradcache_step`` (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", 2021) runs in three passes:

1. every chunk of queries and targets is encoded without an autograd graph, its RNG state
   (CPU and every CUDA device) saved first, and the embeddings cached;
2. the loss and its gradient w.r.t. every cached embedding come from one call of the fused
   ``infonce_loss_and_grads`` in float32 (the Nq x Nc logits are never stored);
3. each chunk is encoded again with its RNG state restored, so dropout and LoRA dropout replay
   exactly, and the cached gradient is back-propagated through it.

One saving: the last target chunk keeps its graph from pass 1 (it only has to outlive the loss,
so peak memory does not change) and is back-propagated first, without recomputation. Under DDP it
is recomputed like the others, since there the all-reducing backward has to come last.

Parameter gradients are accumulated (``+=``) into ``.grad`` exactly as full-batch autograd of the
mean loss would give them. Mixed precision (``torch.autocast`` around the call), gradient clipping,
zeroing and optimizer steps stay with the caller.

**Distributed.** Inside an initialised ``torch.distributed`` process group each rank passes its
own queries and targets. Targets are all-gathered, so every query sees every rank's candidates as
negatives, and default or given labels (indices into the rank's own targets) are offset by the
rank's position in the gathered targets. The loss is the mean over the *global* batch, the same on
every rank and equal to that of one process holding the concatenated batch. Gradient convention:

- an encoder wrapped in ``DistributedDataParallel`` (pass the DDP module itself) back-propagates
  ``world_size`` times its rank's share, so DDP's averaging all-reduce leaves in every rank's
  ``.grad`` exactly the single-process full-batch gradient. ``no_sync`` holds back the all-reduce
  for all but each module's last chunk, so parameters are reduced once per step;
- an encoder sharded with ``fully_shard`` (FSDP2; pass the root module) likewise back-propagates
  ``world_size`` times its share, and FSDP's averaging reduce-scatter leaves each rank's gradient
  shard equal to that shard of the full-batch gradient. FSDP all-gathers parameters in every
  forward and reduce-scatters in every backward, so every rank must run the same number of them:
  a rank with fewer chunks than another re-runs its last chunk (forward without a graph in pass 1,
  forward and a zero-gradient backward in pass 3). FSDP1 (``FullyShardedDataParallel``) is refused;
- any other encoder gets its rank's share only: the sum of ``.grad`` over ranks
  (``all_reduce(SUM)``) is the full-batch gradient.

Failures: argument and label checks run before any collective, and every rank learns whether all
ranks passed them before the first forward (where DDP broadcasts buffers and FSDP all-gathers), so a
bad batch on one process fails every process at once, naming the error on the process that had it.

**fp16.** Backward runs inside the step, so a ``torch.amp.GradScaler`` is passed in (``scaler=``):
the cached gradients are scaled by it and the caller unscales, steps and updates as usual. float16
embeddings from a trainable encoder without a scaler are refused (their gradients would underflow).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tte_fast.distributed import all_reduce_sum, fail_together, gather_rows, row_counts, sync_mode, world
from tte_fast.kernels import infonce_loss_and_grads
from tte_fast.profiling import stage
from tte_fast.prompting.chunking import batch_size, split_inputs
from tte_fast.settings.checks import positive_int

Encoder = Callable[..., torch.Tensor]


@dataclass
class _RngState:
    """The global RNG state (CPU and, when CUDA is in use, every device) before a chunk's forward."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> _RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _encode(encoder: Encoder, chunk, expected_rows: int, side: str) -> torch.Tensor:
    reps = encoder(**chunk) if isinstance(chunk, dict) else encoder(chunk)
    if not isinstance(reps, torch.Tensor):
        raise TypeError(f"the {side} encoder must return a tensor of embeddings, got {type(reps).__name__}")
    if reps.dim() != 2 or reps.shape[0] != expected_rows:
        raise ValueError(
            f"the {side} encoder must return [n, D] embeddings, one row per sample: got shape "
            f"{tuple(reps.shape)} for a chunk of {expected_rows} samples"
        )
    if not reps.is_floating_point():
        raise TypeError(f"{side} embeddings must be floating point, got {reps.dtype}")
    return reps


def _first_pass(encoder: Encoder, chunks: list, side: str, keep_last_graph: bool, pad_to: int):
    """Embeddings of every chunk without a graph (RNG state saved first), except that the last
    chunk's graph is kept when asked: it is back-propagated first, with no need to recompute it.
    Up to ``pad_to`` forwards in all: the last chunk again, output dropped (FSDP ranks in step)."""
    reps, states, kept = [], [], None
    for i, chunk in enumerate(chunks):
        states.append(_RngState.capture())
        keep = keep_last_graph and i == len(chunks) - 1
        with torch.enable_grad() if keep else torch.no_grad():
            out = _encode(encoder, chunk, batch_size(chunk), side)
        kept = out if keep and out.requires_grad else None
        reps.append(out.detach())
    with torch.no_grad():
        for _ in range(pad_to - len(chunks)):
            _encode(encoder, chunks[-1], batch_size(chunks[-1]), side)
    return torch.cat(reps), states, kept


def _check_labels(labels, n_queries: int, n_targets: int) -> torch.Tensor:
    if labels is None:
        if n_targets % n_queries:
            raise ValueError(
                f"without labels, the number of targets ({n_targets}) must be a multiple of the number of "
                f"queries ({n_queries}): query i's positive is target i * {n_targets} // {n_queries}"
            )
        return torch.arange(n_queries) * (n_targets // n_queries)
    labels = torch.as_tensor(labels)
    if labels.shape != (n_queries,) or labels.dtype == torch.bool or labels.is_floating_point():
        got = f"{labels.dtype} {tuple(labels.shape)}"
        raise ValueError(f"labels must be {n_queries} integer indices (one per query), got {got}")
    if labels.min() < 0 or labels.max() >= n_targets:
        raise ValueError(
            f"labels must index the {n_targets} targets, got values in [{labels.min()}, {labels.max()}]"
        )
    return labels.long()


def _loss_and_grads(q: torch.Tensor, t: torch.Tensor, temperature: float, labels: torch.Tensor):
    """Global mean loss and this rank's share of its gradient w.r.t. q and t (fp32)."""
    rank, size = world()
    with torch.autocast(q.device.type, enabled=False):
        q, t = q.float(), t.float()
        if size == 1:
            loss, grad_q, grad_t = infonce_loss_and_grads(q, t, temperature=temperature, labels=labels)
            return loss.detach(), grad_q, grad_t
        with stage("gather"):
            all_t, t_rows = gather_rows(t)
        q_rows = row_counts(q.shape[0])
        offset = sum(t_rows[:rank])
        loss, grad_q, grad_all_t = infonce_loss_and_grads(
            q, all_t, temperature=temperature, labels=labels + offset
        )
        # The kernel gives gradients of this rank's mean; the global mean weighs it by its share.
        share = q.shape[0] / sum(q_rows)
        grad_q = grad_q * share
        # Every rank's queries score this rank's targets: sum those contributions.
        grad_t = all_reduce_sum(grad_all_t * share)[offset : offset + t.shape[0]]
        return all_reduce_sum(loss.detach() * share), grad_q, grad_t


def _check_arguments(encoder, target_encoder, chunk_size, target_chunk_size, temperature) -> None:
    positive_int("chunk_size", chunk_size)
    positive_int("target_chunk_size", target_chunk_size)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not callable(encoder) or not callable(target_encoder):
        raise TypeError("encoder and target_encoder must be callables mapping inputs to embeddings")


def _trainable(encoder: Encoder) -> bool:
    return not isinstance(encoder, nn.Module) or any(p.requires_grad for p in encoder.parameters())


def _padded(chunks: list, states: list | None, grads, target: int) -> list[tuple]:
    """(chunk, RNG state, gradient) per chunk, then re-runs of the last chunk with a zero gradient
    up to ``target`` entries: FSDP ranks must run equally many forwards and backwards."""
    jobs = list(zip(chunks, states or [None] * len(chunks), grads))
    chunk, state, grad = jobs[-1]
    return jobs + [(chunk, state, torch.zeros_like(grad))] * (target - len(jobs))


def _replay_and_backward(jobs: list[tuple], scaler) -> None:
    """Back-propagate each chunk's cached gradient: through the graph kept from the first pass, or
    through a re-encoding under the chunk's saved RNG state (so dropout draws the same masks)."""
    last_use = {id(job[0]): i for i, job in enumerate(jobs)}
    size = world()[1]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    # fork_rng: after the step the global RNG continues from where the first pass left it.
    with torch.random.fork_rng(devices=devices):
        for i, (encoder, chunk, state, grad, side, kept) in enumerate(jobs):
            mode = sync_mode(encoder)
            hold_sync = hasattr(encoder, "no_sync") and last_use[id(encoder)] != i
            # DDP and FSDP average gradients over ranks; each rank holds its share of the sum.
            scale = size if mode != "local" else 1
            with encoder.no_sync() if hold_sync else contextlib.nullcontext():
                if kept is None:
                    state.restore()
                    kept = _encode(encoder, chunk, grad.shape[0], side)
                if kept.requires_grad:
                    grad = grad.to(kept.dtype) * scale
                    kept.backward(scaler.scale(grad) if scaler is not None else grad)


def gradcache_step(
    encoder: Encoder,
    queries,
    targets,
    *,
    chunk_size: int,
    target_chunk_size: int | None = None,
    target_encoder: Encoder | None = None,
    temperature: float = 0.02,
    labels: torch.Tensor | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One cached InfoNCE step: accumulates parameter gradients and returns the detached loss.

    Args:
        encoder: callable or ``nn.Module`` mapping a chunk of queries (a tensor, or a dict passed as
            keyword arguments) to [n, D] embeddings, normalised by the encoder if cosine scores are
            wanted. Wrap it (whole) in DDP for data-parallel training.
        queries, targets: a tensor or a dict of tensors split per sample (see ``tte_fast.prompting.chunking``
            for Qwen-VL images). Without ``labels``, targets hold ``k`` per query (``k >= 1``) and
            query i's positive is target ``i * k``.
        chunk_size: samples per chunk for queries (and targets unless ``target_chunk_size``).
        target_encoder: encoder of the targets; the query encoder when None. A module without
            trainable parameters (either side) is not re-run.
        temperature: InfoNCE temperature (logits are scores / temperature).
        labels: [Nq] indices of each query's positive among this rank's targets.
        scaler: a ``torch.amp.GradScaler`` for float16 training; the gradients it leaves are
            scaled, to be unscaled by ``scaler.step`` / ``scaler.unscale_`` as with ``loss.backward``.
    """
    # Checks run before any collective, and every rank hears whether all passed them before the
    # first forward (DDP broadcasts buffers there, FSDP all-gathers): one bad batch fails them all.
    with fail_together():
        target_encoder = encoder if target_encoder is None else target_encoder
        target_chunk_size = chunk_size if target_chunk_size is None else target_chunk_size
        _check_arguments(encoder, target_encoder, chunk_size, target_chunk_size, temperature)
        modes = {sync_mode(encoder), sync_mode(target_encoder)}  # refuses FSDP1
        n_queries, n_targets = batch_size(queries), batch_size(targets)
        if n_queries == 0 or n_targets == 0:
            raise ValueError(f"need at least one query and one target, got {n_queries} and {n_targets}")
        labels = _check_labels(labels, n_queries, n_targets)
        query_chunks = split_inputs(queries, chunk_size)
        target_chunks = split_inputs(targets, target_chunk_size)
        train_queries, train_targets = _trainable(encoder), _trainable(target_encoder)
    # FSDP ranks run as many chunks as the rank with the most (see _padded).
    fsdp = "fsdp" in modes
    q_forwards = max(row_counts(len(query_chunks))) if fsdp else len(query_chunks)
    t_forwards = max(row_counts(len(target_chunks))) if fsdp else len(target_chunks)
    # The last target chunk's graph outlives only the loss computation, so keeping it costs no
    # extra peak memory and saves one chunk's recomputation. Not under DDP / FSDP: there the synced
    # backward must come last and its forward must be the last one.
    keep_last = (
        train_targets and sync_mode(target_encoder) == "local" and not hasattr(target_encoder, "no_sync")
    )
    with fail_together(), stage("gradcache_forward"):
        q, q_states, _ = _first_pass(encoder, query_chunks, "query", False, q_forwards)
        t, t_states, kept = _first_pass(target_encoder, target_chunks, "target", keep_last, t_forwards)
        if q.shape[1] != t.shape[1]:
            raise ValueError(f"query and target embeddings differ in width: {q.shape[1]} vs {t.shape[1]}")
        _check_precision(q, t, train_queries or train_targets, scaler)
    with stage("gradcache_loss"):
        loss, grad_q, grad_t = _loss_and_grads(q, t, temperature, labels.to(q.device))

    jobs = []
    if train_targets:
        grads = list(grad_t.split(target_chunk_size))
        if kept is not None:  # back-propagated first, which frees its graph before any replay
            jobs.append((target_encoder, None, None, grads.pop(), "target", kept))
            target_chunks, t_states, t_forwards = target_chunks[:-1], t_states[:-1], t_forwards - 1
        if target_chunks:
            for c, st, g in _padded(target_chunks, t_states, grads, t_forwards):
                jobs.append((target_encoder, c, st, g, "target", None))
    if train_queries:  # a frozen query encoder (training targets only) is not re-run either
        for c, st, g in _padded(query_chunks, q_states, grad_q.split(chunk_size), q_forwards):
            jobs.append((encoder, c, st, g, "query", None))
    with stage("gradcache_backward"):
        _replay_and_backward(jobs, scaler)
    return loss


def _check_precision(q: torch.Tensor, t: torch.Tensor, trainable: bool, scaler) -> None:
    if trainable and scaler is None and torch.float16 in (q.dtype, t.dtype):
        raise ValueError(
            "float16 embeddings need loss scaling: the backward runs inside gradcache_step, so pass "
            "scaler=torch.amp.GradScaler() (then scaler.step(optimizer) and scaler.update()), or use "
            "bfloat16"
        )
