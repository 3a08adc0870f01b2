"""The modules each job trains (what DDP wraps): embedder, TTE_u head on frozen states, causal-LM loss.

The embedder and the head read the embedding through ``tte_fast.prompting.batching.embed_batch``, the forward
``UnifiedTTE.encode`` runs (final-norm state at the embedding token, or the TTE_u head over the
layer L-k states), so what is trained is what is run. When the vision tower is trained, a
chunk without images still runs it once on a dummy image with zero weight, so every process touches
every trainable parameter in every backward: DDP would otherwise wait forever on the process that
had images for gradients the image-free process never produces (and FSDP's reduce-scatters would
not match).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tte_fast.prompting.batching import embed_batch
from tte_fast.train.batches import IGNORE_INDEX


def vision_tower(hf_model: nn.Module) -> nn.Module | None:
    return getattr(hf_model.base_model, "visual", None)


class _Owner:
    """Holds the HF model without registering it as a submodule (DDP and FSDP wrap only
    the trained part)."""

    def __init__(self, hf_model):
        self.hf_model = hf_model


class Embedder(nn.Module):
    """Query / target batch (processor outputs ending in the embedding token) -> [B, D] unit vectors,
    by ``tte_fast.prompting.batching.embed_batch``: the forward ``UnifiedTTE.encode`` runs, with gradients."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.backbone = hf_model.base_model
        self.owner = _Owner(hf_model)
        visual = vision_tower(hf_model)
        self.dummy_vision = visual is not None and any(p.requires_grad for p in visual.parameters())

    def forward(self, **batch) -> torch.Tensor:
        # The dummy pass runs first, where real images run: FSDP all-gathers each layer's weights
        # when it starts, and every process must gather them in the same order.
        dummy = None
        if self.dummy_vision and batch.get("pixel_values") is None:
            dummy = _dummy_vision_output(self.backbone)
        emb = embed_batch(self.owner.hf_model, batch)
        return emb if dummy is None else emb + 0.0 * dummy


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
    """The TTE_u head on its frozen backbone, by ``tte_fast.prompting.batching.embed_batch``: the backbone
    stops at layer L-k and the head runs its k layers, as ``UnifiedTTE`` does. The backbone is not
    a submodule (only the head trains and is wrapped) and builds no graph (it has no trainable
    parameters), so each chunk's memory is that of the head; the backbone runs once in each of
    ``gradcache_step``'s two passes."""

    def __init__(self, head: nn.Module, hf_model: nn.Module):
        super().__init__()
        self.head = head
        self.owner = _Owner(hf_model)

    def forward(self, **batch) -> torch.Tensor:
        return embed_batch(self.owner.hf_model, batch, self.head)


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
