"""Two gloo processes on CPU: same loss and gradients as one process holding the concatenated batch.

Rank 0 holds 5 queries and rank 1 holds 3 (uneven, so chunk counts differ), with 2 targets per
query; every query sees both ranks' targets as negatives. Encoders run plain, wrapped in DDP (with
and without a buffer, as every HF model has one) and sharded with FSDP2's ``fully_shard``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from torch import nn

from tte_fast.gradcache import gradcache_step

QUERY_ROWS = (5, 3)
K = 2
CHUNK = 2
FP32_RTOL = 1e-5


class Encoder(nn.Module):
    def __init__(self, with_buffer: bool = False):
        super().__init__()
        self.proj_in = nn.Linear(12, 32)
        self.proj_out = nn.Linear(32, 16)
        if with_buffer:  # like the rotary inv_freq of HF models: DDP broadcasts it in forward
            self.register_buffer("gain", torch.linspace(0.5, 1.5, 32))

    def forward(self, x):
        hidden = F.gelu(self.proj_in(x))
        if hasattr(self, "gain"):
            hidden = hidden * self.gain
        return F.normalize(self.proj_out(hidden), dim=-1)


def wrap(model: nn.Module, mode: str) -> nn.Module:
    if mode.startswith("ddp"):
        return nn.parallel.DistributedDataParallel(model)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.proj_in)
        return fully_shard(model)
    return model


def global_batch():
    g = torch.Generator().manual_seed(1)
    n = sum(QUERY_ROWS)
    queries, targets = torch.randn(n, 12, generator=g), torch.randn(n * K, 12, generator=g)
    # Each query's positive is one of its own K targets, chosen at random.
    local_labels = [torch.randint(0, K, (r,), generator=g) + torch.arange(r) * K for r in QUERY_ROWS]
    return queries, targets, local_labels


MODES = ("plain", "labels", "ddp", "ddp_buffers", "fsdp")
FAILURE_MODES = ("plain", "ddp_buffers", "fsdp")
# A hang shows up as a collective timing out after this long, not as a stuck test run.
GROUP_TIMEOUT = timedelta(seconds=60)


def _one_step(rank: int, mode: str) -> dict:
    torch.manual_seed(0)
    model = Encoder(with_buffer=mode in ("ddp_buffers", "fsdp"))
    queries, targets, local_labels = global_batch()
    start = sum(QUERY_ROWS[:rank])
    stop = start + QUERY_ROWS[rank]
    q, t = queries[start:stop], targets[start * K : stop * K]
    encoder, reduce_calls = wrap(model, mode), []
    if mode == "ddp":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):
            reduce_calls.append(bucket.index())
            return allreduce_hook(None, bucket)

        encoder.register_comm_hook(None, counting_hook)
    labels = local_labels[rank] if mode == "labels" else None
    loss = gradcache_step(encoder, q, t, chunk_size=CHUNK, labels=labels)
    # FSDP holds a shard of each gradient: gather the whole one to compare.
    grads = {
        n: p.grad.full_tensor() if mode == "fsdp" else p.grad.clone() for n, p in model.named_parameters()
    }
    del encoder  # a DDP reducer goes before the process group it uses
    return {"loss": loss, "grads": grads, "reduce_calls": reduce_calls}


def _failing_step(rank: int, mode: str) -> str:
    """Rank 1 passes a label out of range: both ranks must raise, neither may wait forever."""
    q, t = torch.randn(2, 12), torch.randn(4, 12)
    labels = torch.tensor([0, 99]) if rank == 1 else None
    encoder = wrap(Encoder(with_buffer=mode != "plain"), mode)
    try:
        gradcache_step(encoder, q, t, chunk_size=CHUNK, labels=labels)
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        del encoder
    return "no error"


def _worker(rank: int, port: int, out_dir: str):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=GROUP_TIMEOUT
    )
    try:
        results = {mode: _one_step(rank, mode) for mode in MODES}
        results["failure"] = {mode: _failing_step(rank, mode) for mode in FAILURE_MODES}
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """mode -> [rank 0 result, rank 1 result], from one two-process run (spawning costs seconds)."""
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"{r}.pt") for r in range(2)]
    return {mode: [r[mode] for r in ranks] for mode in (*MODES, "failure")}


def single_process_reference(mode):
    torch.manual_seed(0)
    model = Encoder(with_buffer=mode in ("ddp_buffers", "fsdp"))
    queries, targets, local_labels = global_batch()
    if mode == "labels":
        labels = torch.cat([lab + sum(QUERY_ROWS[:r]) * K for r, lab in enumerate(local_labels)])
    else:
        labels = torch.arange(queries.shape[0]) * K
    loss = F.cross_entropy(model(queries) @ model(targets).T / 0.02, labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_close_rel(got, want):
    for name in want:
        err = (got[name] - want[name]).norm() / want[name].norm()
        assert err < FP32_RTOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("mode", ["plain", "labels"])
def test_two_processes_sum_to_the_full_batch_gradient(two_rank_results, mode):
    results = two_rank_results[mode]
    ref_loss, ref_grads = single_process_reference(mode)
    for r in results:
        torch.testing.assert_close(r["loss"], ref_loss, rtol=1e-6, atol=1e-6)
    assert_close_rel({n: results[0]["grads"][n] + results[1]["grads"][n] for n in ref_grads}, ref_grads)


def test_ddp_leaves_the_full_batch_gradient_on_every_rank_with_one_all_reduce(two_rank_results):
    ref_loss, ref_grads = single_process_reference("ddp")
    for r in two_rank_results["ddp"]:
        torch.testing.assert_close(r["loss"], ref_loss, rtol=1e-6, atol=1e-6)
        assert_close_rel(r["grads"], ref_grads)
        # One reduction per gradient bucket per step (the tiny model fits one bucket), though the
        # ranks ran 3 + 6 and 2 + 3 chunks.
        assert r["reduce_calls"] == [0]


@pytest.mark.parametrize("mode", ["ddp_buffers", "fsdp"])
def test_ddp_with_buffers_and_fsdp2_leave_the_full_batch_gradient(two_rank_results, mode):
    """FSDP2 averages over ranks like DDP, and the ranks run 3 + 6 and 2 + 3 chunks: without the
    world-size scale and the padded re-runs, gradients come out halved or the collectives abort."""
    ref_loss, ref_grads = single_process_reference(mode)
    for r in two_rank_results[mode]:
        torch.testing.assert_close(r["loss"], ref_loss, rtol=1e-6, atol=1e-6)
        assert_close_rel(r["grads"], ref_grads)


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_an_error_on_one_process_fails_every_process(two_rank_results, mode):
    """With a buffer, DDP's forward broadcasts it: the healthy rank must not reach that collective
    while the failing rank reports its error (both would wait until the group timeout)."""
    rank0, rank1 = (r[mode] for r in two_rank_results["failure"])
    assert rank1.startswith("ValueError") and "99" in rank1
    assert rank0.startswith("RuntimeError") and "another process" in rank0
