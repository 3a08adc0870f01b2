"""The picture reaches the reasoner in SFT: the trace tokens' loss has a gradient with respect to the
pixels and to every part of the vision tower (merger included), and ``train.vision_lr`` moves the
tower at a rate of its own while the decoder moves at ``train.lr``."""

from __future__ import annotations

import pytest

from tests.train_cases import config, example, full_finetune_job, weights
from tte_fast.inputs import EmbedInput
from tte_fast.train import train
from tte_fast.train.batches import Renderer
from tte_fast.train.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trace_loss_reaches_the_pixels_and_the_whole_vision_tower(tiny_checkpoints, tmp_path):
    from PIL import Image

    loaded, job = full_finetune_job("reasoner", tiny_checkpoints["qwen2_vl"], tmp_path)
    module = job.module
    renderer = Renderer(loaded.processor, True, loaded.tte_config.prompts, 0, "</think>")
    image = Image.open(example("images/red_square.png")).convert("RGB")
    batch = renderer.sft_batch([EmbedInput(text="What is shown?", image=image)], ["a red square"], ["red"])
    batch["pixel_values"] = batch["pixel_values"].float().requires_grad_(True)
    nll, count = module(**batch)
    assert count > 0
    nll.backward()
    assert batch["pixel_values"].grad.abs().sum() > 0
    visual = {n: p.grad for n, p in module.named_parameters() if "visual" in n}
    assert any("merger" in n for n in visual) and any("blocks" in n for n in visual)
    for name, grad in visual.items():
        assert grad is not None and grad.abs().sum() > 0, name


def _change(before: dict, after: dict, vision: bool) -> float:
    return max((after[k] - v).abs().max().item() for k, v in before.items() if ("visual" in k) is vision)


@pytest.mark.parametrize("vision_lr", [None, 1e-9])
def test_vision_lr_moves_the_vision_tower_at_its_own_rate(tiny_checkpoints, tmp_path, vision_lr):
    base = weights(tiny_checkpoints["qwen2_vl"])
    cfg = config(
        "reasoner",
        tiny_checkpoints["qwen2_vl"],
        tmp_path,
        lora={"enabled": False},
        train={"steps": 2, "lr": 1e-3, "freeze_vision": False, "vision_lr": vision_lr},
    )
    trained = weights(train(cfg))
    assert _change(base, trained, vision=False) > 1e-4  # AdamW: steps of about lr
    if vision_lr is None:
        assert _change(base, trained, vision=True) > 1e-4
    else:
        assert _change(base, trained, vision=True) < 1e-7


def test_vision_lr_must_be_positive(tiny_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="train.vision_lr must be positive, got -0.1"):
        config("reasoner", tiny_checkpoints["qwen2_vl"], tmp_path, train={"vision_lr": -0.1})
