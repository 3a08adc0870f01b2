"""The three jobs as (module to train, step function): what one optimizer step computes.

A step function takes the prepared (device-placed, maybe DDP-wrapped) module and this process's
batch, accumulates the gradients of the global mean loss and returns that loss (the same number on
every process).

- reasoner: token NLL over the labelled tokens of every process, so the gradient is that of one
  process holding the whole global batch (DDP averages ``world x`` each process's sum / all tokens);
- embedder: ``gradcache_step`` over query and target chunks (cross-process negatives);
- head: ``gradcache_step`` trains the head on the frozen backbone's layer L-k states (chunk by chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tte_fast.distributed import all_reduce_sum
from tte_fast.gradcache import gradcache_step
from tte_fast.train.config import RunConfig
from tte_fast.train.encoders import CausalLMLoss, Embedder, HeadEncoder
from tte_fast.train.models import Loaded


@dataclass
class Job:
    module: nn.Module
    step: Callable[[nn.Module, dict], torch.Tensor]


def to_device(batch: dict, device, dtype) -> dict:
    """Tensors onto ``device``; pixel values in the model's dtype (as ``UnifiedTTE`` feeds them)."""
    return {
        k: v.to(device, dtype=dtype if k.startswith("pixel_values") else None)
        if isinstance(v, torch.Tensor)
        else v
        for k, v in batch.items()
    }


def build_job(config: RunConfig, loaded: Loaded, accelerator) -> Job:
    device = accelerator.device
    dtype = next(loaded.hf_model.parameters()).dtype
    c = config.contrastive
    contrastive = {
        "chunk_size": c.chunk_size,
        "target_chunk_size": c.target_chunk_size,
        "temperature": c.temperature,
    }
    if accelerator.scaler is not None and config.contrastive_job:
        contrastive["scaler"] = accelerator.scaler  # fp16: the cached step scales its own backward

    if config.job == "reasoner":

        def reasoner_step(module, batch):
            nll, count = module(**to_device(batch["inputs"], device, dtype))
            total = all_reduce_sum(count.detach().float().clone())
            accelerator.backward(nll * accelerator.num_processes / total)
            return all_reduce_sum(nll.detach().clone()) / total

        return Job(CausalLMLoss(loaded.hf_model), reasoner_step)

    if config.job == "embedder":

        def embedder_step(module, batch):
            queries = to_device(batch["queries"], device, dtype)
            targets = to_device(batch["targets"], device, dtype)
            return gradcache_step(module, queries, targets, **contrastive)

        return Job(Embedder(loaded.hf_model), embedder_step)

    loaded.hf_model.to(device)  # frozen: accelerate places only the head

    def head_step(module, batch):
        queries = to_device(batch["queries"], device, dtype)
        targets = to_device(batch["targets"], device, dtype)
        return gradcache_step(module, queries, targets, **contrastive)

    return Job(HeadEncoder(loaded.head, loaded.hf_model), head_step)
