"""The modules each job trains (what DDP wraps): embedder, TTE_u head on frozen states, causal-LM loss.

The embedder reads the embedding where ``UnifiedTTE.encode`` reads it (the final-norm hidden state
at the embedding token, ``pool_normalize``, same position ids). When the vision tower is trained, a
chunk without images still runs it once on a dummy image with zero weight, so every process touches
every trainable parameter in every backward: DDP would otherwise wait forever on the process that
had images for gradients the image-free process never produces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tte_fast.generate import model_inputs, prefill_position_ids
from tte_fast.kernels import pool_normalize
from tte_fast.train.batches import IGNORE_INDEX


def vision_tower(hf_model: nn.Module) -> nn.Module | None:
    return getattr(hf_model.base_model, "visual", None)


class _Owner:
    """Holds the HF model for position ids without registering it as a submodule (DDP wraps only
    the trained part)."""

    def __init__(self, hf_model):
        self.hf_model = hf_model


class Embedder(nn.Module):
    """Query / target batch (processor outputs ending in the embedding token) -> [B, D] unit vectors."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.backbone = hf_model.base_model
        self.owner = _Owner(hf_model)
        visual = vision_tower(hf_model)
        self.dummy_vision = visual is not None and any(p.requires_grad for p in visual.parameters())

    def forward(self, **batch) -> torch.Tensor:
        position_ids, _ = prefill_position_ids(self.owner.hf_model, batch)
        hidden = self.backbone(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=position_ids,
            use_cache=False,
            **model_inputs(self.backbone, batch),
        ).last_hidden_state
        emb = pool_normalize(hidden, batch["attention_mask"])
        if self.dummy_vision and batch.get("pixel_values") is None:
            emb = emb + 0.0 * _dummy_vision_output(self.backbone)
        return emb


def _dummy_vision_output(backbone: nn.Module) -> torch.Tensor:
    """A zero-weight scalar that depends on every vision parameter: one smallest image through the tower."""
    visual = backbone.visual
    config = backbone.config.vision_config
    merge = getattr(config, "spatial_merge_size", 2)
    channels = getattr(config, "in_channels", None) or getattr(config, "in_chans", 3)
    width = channels * config.temporal_patch_size * config.patch_size**2
    param = next(visual.parameters())
    pixels = torch.zeros(merge * merge, width, device=param.device, dtype=param.dtype)
    grid = torch.tensor([[1, merge, merge]], device=param.device)
    out = visual(pixels, grid_thw=grid)
    values = out.values() if hasattr(out, "values") else (out if isinstance(out, (tuple, list)) else [out])
    total = 0.0
    for v in values:
        for t in v if isinstance(v, (tuple, list)) else [v]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                total = total + t.float().sum()
    return total


class HeadEncoder(nn.Module):
    """The TTE_u head over precomputed layer L-k states; rotary tables come batch-first so that
    ``gradcache_step`` can split them with the rest of the chunk."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden, attention_mask, cos, sin) -> torch.Tensor:
        return self.head(hidden, attention_mask, (cos.movedim(0, -3), sin.movedim(0, -3)))


@torch.no_grad()
def head_source_batch(head, hf_model: nn.Module, batch: dict) -> dict:
    """The frozen backbone's layer L-k states for a batch, as ``UnifiedTTE`` computes them."""
    backbone = hf_model.base_model
    position_ids, _ = prefill_position_ids(hf_model, batch)
    hidden, (cos, sin) = head.source_states(
        backbone,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids,
        **model_inputs(backbone, batch),
    )
    b = hidden.shape[0]

    def batch_first(t):
        return t.expand(*t.shape[:-3], b, *t.shape[-2:]).movedim(-3, 0).contiguous()

    return {
        "hidden": hidden,
        "attention_mask": batch["attention_mask"],
        "cos": batch_first(cos),
        "sin": batch_first(sin),
    }


class CausalLMLoss(nn.Module):
    """Summed token NLL over labelled positions and their count; logits only where there are labels."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model

    def forward(self, labels: torch.Tensor, **batch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.base_model(**batch, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        nll = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return nll, keep.sum()
