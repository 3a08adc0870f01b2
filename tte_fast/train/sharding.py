"""FSDP2 (``train.fsdp: true``): the trained module sharded with ``torch.distributed.fsdp.fully_shard``.

Every decoder layer and vision block (the HF model's ``_no_split_modules``) is one FSDP unit, the
trained module (embedder or causal-LM loss) the root. accelerate's own FSDP plugin is not used:
accelerate enables it only for GPU process groups (on CPU it would wrap the model in DDP instead),
and it saves FSDP state in its own layout. Sharding by hand before the optimizer is built runs
the same code on CPU (gloo) and GPU (NCCL), so the two-process tests check what GPUs run.

The GradCache step supports FSDP2 roots (``tte_fast.gradcache``): each rank back-propagates
``world_size`` times its share and the averaging reduce-scatter leaves every rank its shard of the
full-batch gradient. FSDP1 (``FullyShardedDataParallel``, accelerate's ``fsdp_version: 1``) is
refused.

Checkpoints stay in the DDP layout: the trainable weights are gathered to full tensors on the main
process and written as ``model.safetensors``, the optimizer state gathered to one full state dict
(``optimizer.bin``, keyed by parameter name). Loading reads both on the main process and
broadcasts them into the shards, so a checkpoint does not depend on how it was sharded. The final
model is gathered the same way and saved by ``UnifiedTTE.save_pretrained`` from an unsharded copy
of the base model loaded on the main process (CPU memory: the full weights twice, once).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import nn

from tte_fast.train.checkpoint import MODEL_FILE

OPTIMIZER_FILE = "optimizer.bin"


def refuse_accelerate_fsdp(accelerator) -> None:
    """accelerate's FSDP (from ``accelerate config`` / launch flags) is not how this trainer shards."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        version = getattr(plugin, "fsdp_version", 1)
        which = (
            "FSDP1 (FullyShardedDataParallel) is not supported by the GradCache step; "
            if version == 1
            else ""
        )
        raise ValueError(
            f"accelerate was configured for FSDP (fsdp_version {version}): {which}launch without "
            "accelerate's FSDP settings and set train.fsdp: true, which shards the trained model with "
            "FSDP2 (fully_shard)"
        )


def shard(module: nn.Module, hf_model: nn.Module, device: torch.device) -> dict[str, str]:
    """Shard ``module`` (which holds ``hf_model`` or its backbone) in place: every layer of the HF
    model's ``_no_split_modules`` classes inside it, then the module itself as the root. Returns the
    HF model's name of each of the module's parameters (for saving the final model)."""
    from torch.distributed.fsdp import fully_shard

    if not torch.distributed.is_initialized():
        raise RuntimeError("train.fsdp needs torch.distributed processes: launch with torchrun")
    hf_names: dict[int, str] = {}
    for name, p in hf_model.named_parameters(remove_duplicate=False):
        hf_names.setdefault(id(p), name)
    names = {name: hf_names[id(p)] for name, p in module.named_parameters()}
    module.to(device)
    classes = set(getattr(hf_model, "_no_split_modules", None) or [])
    layers = [m for m in module.modules() if type(m).__name__ in classes]
    if not layers:
        raise ValueError(f"{type(hf_model).__name__} names no layer classes (_no_split_modules) to shard")
    for layer in layers:
        fully_shard(layer)
    fully_shard(module)
    return names


def full_norm(norm) -> torch.Tensor:
    """A gradient norm over sharded gradients is a DTensor: its full value."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def gather_weights(module: nn.Module, keep: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Full CPU tensors of ``module``'s state (only ``keep`` names when given) on the main process;
    an empty dict elsewhere. Every process must call it (it all-gathers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_full_options(cpu_offload=True))
    return {k: v for k, v in state.items() if keep is None or k in keep}


class ShardedState:
    """Weights and optimizer state of a sharded module, saved full and loaded back into the shards."""

    def __init__(self, module: nn.Module, optimizer, trainable: set[str]):
        self.module, self.optimizer, self.trainable = module, optimizer, trainable

    def save(self, folder: str, main: bool) -> None:
        """Every process calls this (the gathers are collectives); the main process writes."""
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        weights = gather_weights(self.module, self.trainable)
        optimizer = get_optimizer_state_dict(
            self.module, self.optimizer, options=_full_options(cpu_offload=True)
        )
        if main:
            save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(folder, MODEL_FILE))
            torch.save(optimizer, os.path.join(folder, OPTIMIZER_FILE))

    def load(self, folder: str, main: bool) -> None:
        """The main process reads the full state and broadcasts it into every process's shards."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        path = os.path.join(folder, MODEL_FILE)
        with safe_open(path, "pt") as f:
            saved = set(f.keys())
        if saved != self.trainable:  # every process checks, so all fail together
            missing, extra = sorted(self.trainable - saved)[:5], sorted(saved - self.trainable)[:5]
            raise ValueError(
                f"{folder}: the checkpoint's weights do not match this run's trainable parameters "
                f"(missing e.g. {missing}, unexpected e.g. {extra}); resume with the same config"
            )
        weights = load_file(path) if main else {}
        optimizer = torch.load(os.path.join(folder, OPTIMIZER_FILE), weights_only=False) if main else {}
        options = _full_options(broadcast_from_rank0=True, strict=False)
        set_model_state_dict(self.module, weights, options=options)
        set_optimizer_state_dict(self.module, self.optimizer, optimizer, options=options)


def unsharded(loaded, names: dict[str, str], module: nn.Module, config, main: bool):
    """A ``Loaded`` whose HF model is a plain copy of the trained (sharded) one, on the main process
    (None elsewhere). Every process must call it (it all-gathers)."""
    from tte_fast.checkpoint.loading import load_backbone, resolve_dtype

    weights = gather_weights(module)
    if not main:
        return None
    hf_model, _ = load_backbone(config.model, resolve_dtype(config.model_dtype), torch.device("cpu"), "sdpa")
    state = {names[k]: v for k, v in weights.items()}
    missing = set(state) - set(hf_model.state_dict())
    if missing:
        raise RuntimeError(f"the trained weights have no place in the base model: {sorted(missing)[:5]}")
    hf_model.load_state_dict(state, strict=False)
    return replace(loaded, hf_model=hf_model, peft_model=None)
