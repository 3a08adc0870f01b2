"""gradcache_step against plain autograd: parameter gradients, loss, RNG replay, LoRA, errors."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tte_fast.gradcache import gradcache_step

FP32_RTOL = 1e-5  # relative error (norm of difference / norm) of fp32 parameter gradients
BF16_RTOL = 2e-2
FP16_RTOL = 5e-3


class Encoder(nn.Module):
    """Small MLP embedder with dropout; returns unit-norm rows."""

    def __init__(self, d_in=12, hidden=32, d_out=16, dropout=0.25):
        super().__init__()
        self.proj_in = nn.Linear(d_in, hidden)
        self.drop = nn.Dropout(dropout)
        self.proj_out = nn.Linear(hidden, d_out)

    def forward(self, x):
        return F.normalize(self.proj_out(self.drop(F.gelu(self.proj_in(x)))), dim=-1)


def grads_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict, rtol: float):
    assert got.keys() == want.keys() and want
    for name in want:
        err = (got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-30)
        assert err < rtol, f"{name}: relative error {err:.2e}"


def reference_step(q_encoder, t_encoder, queries, targets, chunk, t_chunk, temperature, labels):
    """Full-batch autograd over the same chunk forwards (so dropout draws the same masks)."""
    q = torch.cat([q_encoder(c) for c in queries.split(chunk)])
    t = torch.cat([t_encoder(c) for c in targets.split(t_chunk)])
    loss = F.cross_entropy(q.float() @ t.float().T / temperature, labels)
    loss.backward()
    return loss.detach()


def rng_states() -> list[torch.Tensor]:
    return [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])


def run_both(
    model, queries, targets, chunk, t_chunk=None, temperature=0.02, labels=None, t_model=None, seed=3
):
    t_model_or_q = t_model or model
    k = targets.shape[0] // queries.shape[0]
    ref_labels = (torch.arange(queries.shape[0]) * k if labels is None else labels).to(queries.device)
    torch.manual_seed(seed)
    ref_loss = reference_step(
        model, t_model_or_q, queries, targets, chunk, t_chunk or chunk, temperature, ref_labels
    )
    rng_after_ref = rng_states()
    want = grads_of(model), (grads_of(t_model) if t_model else None)
    model.zero_grad(set_to_none=True)
    if t_model:
        t_model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = gradcache_step(
        model,
        queries,
        targets,
        chunk_size=chunk,
        target_chunk_size=t_chunk,
        target_encoder=t_model,
        temperature=temperature,
        labels=labels,
    )
    # The step leaves the global RNG where its first (no-graph) pass left it.
    assert all(torch.equal(a, b) for a, b in zip(rng_states(), rng_after_ref, strict=True))
    got = grads_of(model), (grads_of(t_model) if t_model else None)
    return loss, ref_loss, got, want


@pytest.mark.parametrize(
    "n_queries,k,chunk,t_chunk",
    [(12, 1, 4, None), (12, 1, 5, None), (10, 2, 3, 7), (7, 3, 1, 4), (9, 1, 32, None)],
)
def test_gradients_match_full_batch_with_dropout(n_queries, k, chunk, t_chunk):
    torch.manual_seed(0)
    model = Encoder().train()
    queries, targets = torch.randn(n_queries, 12), torch.randn(n_queries * k, 12)
    loss, ref_loss, (got, _), (want, _) = run_both(model, queries, targets, chunk, t_chunk)
    assert loss.requires_grad is False and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert_grads_close(got, want, FP32_RTOL)


def test_single_forward_reference_without_dropout():
    """Without dropout the reference is one plain forward over the whole batch."""
    torch.manual_seed(1)
    model = Encoder(dropout=0.0)
    queries, targets = torch.randn(11, 12), torch.randn(22, 12)
    labels = torch.randperm(22)[:11]
    loss_ref = F.cross_entropy(model(queries) @ model(targets).T / 0.05, labels)
    loss_ref.backward()
    want = grads_of(model)
    model.zero_grad(set_to_none=True)
    loss = gradcache_step(
        model, queries, targets, chunk_size=4, target_chunk_size=6, temperature=0.05, labels=labels
    )
    torch.testing.assert_close(loss, loss_ref.detach(), rtol=1e-6, atol=1e-6)
    assert_grads_close(grads_of(model), want, FP32_RTOL)


def test_gradients_accumulate_into_existing_grads():
    torch.manual_seed(2)
    model = Encoder(dropout=0.0)
    queries, targets = torch.randn(6, 12), torch.randn(6, 12)
    gradcache_step(model, queries, targets, chunk_size=4)
    once = grads_of(model)
    gradcache_step(model, queries, targets, chunk_size=4)
    assert_grads_close(grads_of(model), {n: 2 * g for n, g in once.items()}, FP32_RTOL)


def test_separate_target_encoder_and_frozen_target_encoder():
    torch.manual_seed(4)
    q_model, t_model = Encoder(), Encoder(d_in=10, dropout=0.1)
    queries, targets = torch.randn(9, 12), torch.randn(18, 10)
    loss, ref_loss, (got_q, got_t), (want_q, want_t) = run_both(
        q_model, queries, targets, 4, 5, t_model=t_model
    )
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert_grads_close(got_q, want_q, FP32_RTOL)
    assert_grads_close(got_t, want_t, FP32_RTOL)

    # A frozen target encoder is not re-run; the query side still gets the full-batch gradient.
    t_model.requires_grad_(False)
    calls = []
    t_model.register_forward_hook(lambda *_: calls.append(1))
    q_model.zero_grad(set_to_none=True)
    loss, ref_loss, (got_q, _), (want_q, _) = run_both(q_model, queries, targets, 4, 5, t_model=t_model)
    assert_grads_close(got_q, want_q, FP32_RTOL)
    assert len(calls) == 2 * 4  # reference: 4 chunks; cached step: 4 chunks in the first pass only


def test_frozen_query_encoder_is_not_rerun():
    torch.manual_seed(5)
    q_model, t_model = Encoder(), Encoder(d_in=10, dropout=0.1)
    q_model.requires_grad_(False)
    calls = []
    q_model.register_forward_hook(lambda *_: calls.append(1))
    queries, targets = torch.randn(9, 12), torch.randn(18, 10)
    _, _, (_, got_t), (_, want_t) = run_both(q_model, queries, targets, 4, 5, t_model=t_model)
    assert_grads_close(got_t, want_t, FP32_RTOL)
    assert len(calls) == 3 + 3  # reference: 3 query chunks; cached step: 3 in the first pass only


class SyncingEncoder(Encoder):
    """Has DDP's ``no_sync``; records whether each forward ran inside it."""

    def __init__(self):
        super().__init__()
        self.inside, self.calls = False, []

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), self.inside))
        return super().forward(x)


def test_recomputation_count_and_no_sync():
    torch.manual_seed(8)
    queries, targets = torch.randn(7, 12), torch.randn(7, 12)
    # A plain module: every chunk is encoded twice except the last target chunk, whose graph is kept.
    model = Encoder()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    loss, ref_loss, (got, _), (want, _) = run_both(model, queries, targets, 3)
    assert_grads_close(got, want, FP32_RTOL)
    assert calls[6:] == [False] * 5 + [True] + [True] * 5  # reference: 6 calls; step: 6 + 5

    # With no_sync (DDP's interface): every chunk is replayed, all but the last inside no_sync.
    model = SyncingEncoder()
    loss, ref_loss, (got, _), (want, _) = run_both(model, queries, targets, 3)
    assert_grads_close(got, want, FP32_RTOL)
    step_calls = model.calls[6:]
    assert step_calls[:6] == [(False, False)] * 6
    assert step_calls[6:] == [(True, True)] * 5 + [(True, False)]


def test_dict_inputs_are_passed_as_keywords():
    torch.manual_seed(5)
    model = Encoder(dropout=0.1)

    def encoder(x, scale, flag=None):
        assert flag == "kept" and scale.shape[0] == x.shape[0]
        return model(x * scale[:, None])

    queries = {"x": torch.randn(7, 12), "scale": torch.rand(7) + 0.5, "flag": "kept"}
    targets = {"x": torch.randn(7, 12), "scale": torch.rand(7) + 0.5, "flag": "kept"}
    torch.manual_seed(9)
    loss = gradcache_step(encoder, queries, targets, chunk_size=3)
    got = grads_of(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(9)
    reps = [
        torch.cat([encoder(b["x"][i : i + 3], b["scale"][i : i + 3], "kept") for i in range(0, 7, 3)])
        for b in (queries, targets)
    ]
    ref = F.cross_entropy(reps[0] @ reps[1].T / 0.02, torch.arange(7))
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-6, atol=1e-6)
    assert_grads_close(got, grads_of(model), FP32_RTOL)


def test_lora_dropout_replays_exactly():
    peft = pytest.importorskip("peft")
    torch.manual_seed(6)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["proj_in", "proj_out"], init_lora_weights=False
    )
    model = peft.get_peft_model(Encoder(dropout=0.0), config).train()
    queries, targets = torch.randn(10, 12), torch.randn(10, 12)
    loss, ref_loss, (got, _), (want, _) = run_both(model, queries, targets, 3)
    assert any("lora_A" in n for n in want) and not any("base_layer" in n for n in want)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert_grads_close(got, want, FP32_RTOL)


def test_bf16_autocast_around_the_step():
    torch.manual_seed(7)
    model = Encoder(dropout=0.1)
    queries, targets = torch.randn(8, 12), torch.randn(8, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ref_loss, (got, _), (want, _) = run_both(model, queries, targets, 3)
    torch.testing.assert_close(loss, ref_loss, rtol=BF16_RTOL, atol=BF16_RTOL)
    assert_grads_close(got, want, BF16_RTOL)


def test_grad_scaler_scales_the_cached_gradients():
    """The backward runs inside the step, so the scaler must scale it: the gradients left are the
    full-batch ones times the scale, and ``unscale_`` brings them back."""
    torch.manual_seed(8)
    model = Encoder(dropout=0.0)
    queries, targets = torch.randn(6, 12), torch.randn(6, 12)
    reference_step(model, model, queries, targets, 6, 6, 0.02, torch.arange(6))
    want = grads_of(model)
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    gradcache_step(model, queries, targets, chunk_size=4, scaler=scaler)
    assert_grads_close(grads_of(model), {n: g * 1024 for n, g in want.items()}, FP32_RTOL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.unscale_(optimizer)
    assert_grads_close(grads_of(model), want, FP32_RTOL)


def test_float16_training_with_a_scaler_matches_fp32():
    torch.manual_seed(9)
    model = Encoder(dropout=0.0)
    queries, targets = torch.randn(6, 12), torch.randn(6, 12)
    reference_step(model, model, queries, targets, 6, 6, 0.02, torch.arange(6))
    want = grads_of(model)
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with torch.autocast("cpu", dtype=torch.float16):  # fp32 weights, fp16 activations: standard AMP
        gradcache_step(model, queries, targets, chunk_size=4, scaler=scaler)
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    assert_grads_close(grads_of(model), want, FP16_RTOL)


def test_float16_without_a_scaler_is_refused():
    model = Encoder()
    x = torch.randn(4, 12)
    with pytest.raises(ValueError, match="scaler=torch.amp.GradScaler"), torch.autocast("cpu", torch.float16):
        gradcache_step(model, x, x, chunk_size=2)
    assert all(p.grad is None for p in model.parameters())


def test_fsdp1_is_refused():
    from torch.distributed.fsdp import FullyShardedDataParallel

    # FSDP1 cannot be built without an accelerator; the check only looks at the type.
    wrapped = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    x = torch.randn(2, 12)
    with pytest.raises(TypeError, match="FSDP1.*fully_shard"):
        gradcache_step(wrapped, x, x, chunk_size=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_dropout_replay(autocast):
    """CUDA dropout draws from the device generator: its state is saved and restored per chunk."""
    torch.manual_seed(10)
    model = Encoder(d_in=64, hidden=256, d_out=64, dropout=0.25).cuda()
    queries, targets = torch.randn(40, 64, device="cuda"), torch.randn(80, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss, ref_loss, (got, _), (want, _) = run_both(model, queries, targets, 16, 24)
    rtol = BF16_RTOL if autocast else FP32_RTOL
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=rtol)
    assert_grads_close(got, want, rtol)


class TestBadInput:
    def setup_method(self):
        self.model = Encoder()
        self.x = torch.randn(4, 12)

    def test_mismatched_query_target_counts(self):
        with pytest.raises(ValueError, match=r"targets \(5\).*queries \(4\)"):
            gradcache_step(self.model, self.x, torch.randn(5, 12), chunk_size=2)

    @pytest.mark.parametrize("chunk", [0, -1, 2.0, True])
    def test_bad_chunk_size(self, chunk):
        with pytest.raises(ValueError, match="chunk_size"):
            gradcache_step(self.model, self.x, self.x, chunk_size=chunk)

    def test_bad_target_chunk_size(self):
        with pytest.raises(ValueError, match="target_chunk_size"):
            gradcache_step(self.model, self.x, self.x, chunk_size=2, target_chunk_size=0)

    @pytest.mark.parametrize("shape_fn", [lambda y: y.sum(-1), lambda y: y[:, None, :], lambda y: y[:1]])
    def test_embeddings_not_n_by_d(self, shape_fn):
        with pytest.raises(ValueError, match=r"\[n, D\]"):
            gradcache_step(lambda x: shape_fn(self.model(x)), self.x, self.x, chunk_size=2)

    def test_encoder_not_returning_a_tensor(self):
        with pytest.raises(TypeError, match="tensor of embeddings"):
            gradcache_step(lambda x: {"emb": self.model(x)}, self.x, self.x, chunk_size=2)

    def test_width_mismatch(self):
        with pytest.raises(ValueError, match="width"):
            gradcache_step(
                self.model, self.x, self.x, chunk_size=2, target_encoder=lambda x: self.model(x)[:, :8]
            )

    @pytest.mark.parametrize(
        "labels", [torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 2]), torch.tensor([0.0, 1, 2, 3])]
    )
    def test_bad_labels(self, labels):
        with pytest.raises(ValueError, match="labels"):
            gradcache_step(self.model, self.x, self.x, chunk_size=2, labels=labels)

    @pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
    def test_bad_temperature(self, temperature):
        with pytest.raises(ValueError, match="temperature"):
            gradcache_step(self.model, self.x, self.x, chunk_size=2, temperature=temperature)

    def test_empty_batch(self):
        with pytest.raises(ValueError, match="at least one"):
            gradcache_step(self.model, self.x[:0], self.x, chunk_size=2)
