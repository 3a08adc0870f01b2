"""One training step, checked against a hand-built expectation: the reasoner's label mask, and the
embedder step's gradients against plain full-batch autograd on the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.train_cases import config, full_finetune_job
from tte_fast.inputs import EmbedInput
from tte_fast.prompting.prompts import DEFAULT_QUERY_INSTRUCTION, DEFAULT_REASONING_INSTRUCTION, PromptConfig
from tte_fast.train.batches import IGNORE_INDEX, Renderer
from tte_fast.train.jobs import build_job
from tte_fast.train.models import load_for_training, make_trainable

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(seed=0, size=(56, 84)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def test_reasoner_labels_cover_the_assistant_turn_only(tiny_checkpoints, tmp_path):
    loaded = load_for_training(config("reasoner", tiny_checkpoints["qwen2_vl"], tmp_path))
    tok = loaded.processor.tokenizer
    renderer = Renderer(loaded.processor, True, PromptConfig(), 0, "</think>")
    items = [EmbedInput(text="what is it?", image=_image()), EmbedInput(text="a much longer question " * 3)]
    batch = renderer.sft_batch(items, ["round and red", "long"], ["a red ball", "yes"])

    n_patches = int(batch["image_grid_thw"][0].prod()) // 4  # tokens after the 2x2 merge
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>" + "<|image_pad|>" * n_patches + "<|vision_end|>"
        f"{DEFAULT_QUERY_INSTRUCTION}\nwhat is it?\n{DEFAULT_REASONING_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    answer = "<think>\nround and red\n</think>\n\na red ball<|im_end|>"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"]
    row = len(p_ids) + len(a_ids)
    assert batch["input_ids"][0, :row].tolist() == p_ids + a_ids
    assert batch["labels"][0, :row].tolist() == [IGNORE_INDEX] * len(p_ids) + a_ids
    assert batch["attention_mask"][0].tolist() == [1] * row + [0] * (batch["input_ids"].shape[1] - row)
    assert (batch["labels"][0, row:] == IGNORE_INDEX).all()  # padding
    # Image tokens are marked for M-RoPE; the assistant turn is text.
    assert batch["mm_token_type_ids"][0].sum() == n_patches and batch["mm_token_type_ids"][1].sum() == 0
    labelled = batch["labels"][1][batch["labels"][1] != IGNORE_INDEX]
    assert tok.decode(labelled) == "<think>\nlong\n</think>\n\nyes<|im_end|>"


@pytest.mark.parametrize("freeze", [True, False])
def test_reasoner_vision_tower_trains_only_when_unfrozen(tiny_checkpoints, tmp_path, freeze):
    from tte_fast.train.models import trainable_names

    cfg = config(
        "reasoner",
        tiny_checkpoints["qwen2_vl"],
        tmp_path,
        lora={"enabled": False},
        train={"freeze_vision": freeze},
    )
    loaded = load_for_training(cfg)
    make_trainable(loaded, cfg)
    names = trainable_names(loaded.hf_model)
    assert any("visual" not in n for n in names)
    assert any("visual" in n for n in names) is not freeze


def test_embedder_step_gradients_equal_full_batch_autograd(tiny_checkpoints, tmp_path):
    contrastive = {"chunk_size": 2, "target_chunk_size": 3, "temperature": 0.05}
    model = tiny_checkpoints["qwen2_vl"]
    loaded, job = full_finetune_job("embedder", model, tmp_path, contrastive=contrastive)
    tte = loaded.tte_config
    renderer = Renderer(
        loaded.processor,
        True,
        tte.prompts,
        tte.resolve_embed_token(loaded.processor.tokenizer)[1],
        "</think>",
    )
    queries = [
        EmbedInput(text="red", image=_image(0)),
        EmbedInput(text="a query without image"),
        EmbedInput(text="blue", image=_image(1, (84, 56))),
    ]
    targets = [EmbedInput(text=f"target {i}", image=_image(i + 2) if i % 2 else None) for i in range(6)]
    batch = {
        "queries": renderer.contrastive_batch(
            queries, "query", ["<think>\nshape\n</think>\n\nred", None, None]
        ),
        "targets": renderer.contrastive_batch(targets, "target", [None] * 6),
    }
    module = job.module
    loss = job.step(module, batch)  # positive of query i is target 2 i, its hard negative 2 i + 1
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)

    q, t = module(**batch["queries"]), module(**batch["targets"])
    ref = F.cross_entropy(q @ t.T / 0.05, torch.arange(3) * 2)
    ref.backward()
    want = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys() and any("visual" in n for n in want)
    diff = torch.cat([(got[n] - g).flatten() for n, g in want.items()])
    assert diff.norm() / torch.cat([g.flatten() for g in want.values()]).norm() < 1e-5


@pytest.mark.parametrize("job_name", ["embedder", "head"])
def test_fp16_step_scales_through_gradcache_and_matches_fp32(tiny_checkpoints, tmp_path, job_name):
    """accelerate's GradScaler reaches gradcache_step: under float16 autocast (accelerate has no CPU
    fp16, so the test autocasts itself) the step leaves gradients scaled by the scaler that, unscaled,
    are the float32 step's within float16 tolerance."""
    from accelerate import Accelerator

    cfg = config(
        job_name,
        tiny_checkpoints["qwen2_vl"],
        tmp_path,
        lora={"enabled": False},
        contrastive={"chunk_size": 2, "temperature": 0.05},
    )
    loaded = load_for_training(cfg)
    make_trainable(loaded, cfg)
    tte = loaded.tte_config
    embed_id = tte.resolve_embed_token(loaded.processor.tokenizer)[1]
    renderer = Renderer(loaded.processor, True, tte.prompts, embed_id, "</think>")
    queries = [EmbedInput(text="red", image=_image(0)), EmbedInput(text="a query"), EmbedInput(text="blue")]
    targets = [EmbedInput(text=f"target {i}") for i in range(3)]
    batch = {
        "queries": renderer.contrastive_batch(
            queries, "query", ["<think>\nshape\n</think>\n\nred", None, None]
        ),
        "targets": renderer.contrastive_batch(targets, "target", [None] * 3),
    }
    accelerator = Accelerator(cpu=True)

    def step(scaler):
        accelerator.scaler = scaler
        job = build_job(cfg, loaded, accelerator)
        job.module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            loss = job.step(job.module, batch)
        return loss, {n: p.grad.clone() for n, p in job.module.named_parameters() if p.grad is not None}

    want_loss, want = step(None)
    scale = 2.0**12
    loss, got = step(torch.amp.GradScaler("cpu", init_scale=scale))
    got = {n: g / scale for n, g in got.items()}
    module = build_job(cfg, loaded, accelerator).module  # plain float16 autograd, same batch
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        q, t = module(**batch["queries"]), module(**batch["targets"])
        F.cross_entropy(q.float() @ t.float().T / 0.05, torch.arange(3)).backward()
    plain16 = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() == plain16.keys() and want
    torch.testing.assert_close(loss, want_loss, rtol=2e-2, atol=2e-3)

    def relative(a, b):
        diff = torch.cat([(a[n] - g).flatten() for n, g in b.items()])
        return diff.norm() / torch.cat([g.flatten() for g in b.values()]).norm()

    # float16 moves the gradients by about 2% here (plain autograd alike); the cached step adds
    # nothing to that, and unscaled by the wrong factor (or not at all) it would be far off.
    assert 0 < relative(got, want) < 5e-2
    assert relative(got, plain16) < 5e-3


def test_fp16_on_cpu_is_refused(tmp_path):
    from tte_fast.train import train

    cfg = config("embedder", "unused", tmp_path, train={"mixed_precision": "fp16", "cpu": True})
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train(cfg)
