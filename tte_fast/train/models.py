"""Loading a checkpoint for training, choosing what trains (LoRA, full, head) and writing the result.

The result is written by ``UnifiedTTE.save_pretrained`` (LoRA merged first, by default), so every
job's output loads with ``UnifiedTTE.from_pretrained`` / ``TwoModelTTE.from_pretrained`` as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
from torch import nn

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.checkpoint.load import resolve_tiny
from tte_fast.checkpoint.loading import load_backbone, resolve_dtype
from tte_fast.checkpoint.model_types import QWEN_VL_MODEL_TYPES
from tte_fast.checkpoint.tte_config import TTEConfig
from tte_fast.prompting.prompts import PromptConfig
from tte_fast.train.config import RunConfig
from tte_fast.train.encoders import vision_tower

ADAPTER_DIR = "adapter"


@dataclass
class Loaded:
    hf_model: nn.Module
    processor: object
    model_type: str
    tte_config: TTEConfig
    peft_model: nn.Module | None = None
    head: nn.Module | None = None

    @property
    def vision(self) -> bool:
        return self.model_type in QWEN_VL_MODEL_TYPES


def resolve_model(model: str, output_dir: str, accelerator) -> str:
    """``tiny:MODEL_TYPE`` (a built-in tiny random-weight model, to try the jobs) as a checkpoint
    folder under ``output_dir/tiny_base``, built by the main process; any other model as is."""
    folder = os.path.join(output_dir, "tiny_base")
    if accelerator.is_main_process:
        resolve_tiny(model, folder)
    accelerator.wait_for_everyone()
    return resolve_tiny(model, folder)


def load_for_training(config: RunConfig) -> Loaded:
    """The base checkpoint on CPU in ``model_dtype`` (accelerate places it), its processor and the
    runtime config the trained model will be saved with (the base's, plus ``prompts`` overrides)."""
    hf_model, model_type = load_backbone(
        config.model, resolve_dtype(config.model_dtype), torch.device("cpu"), "sdpa"
    )
    processor = load_processor(config.model, model_type)
    tte = TTEConfig.load(config.model) or TTEConfig()
    if config.prompts:
        tte = replace(tte, prompts=PromptConfig.from_dict({**tte.prompts.to_dict(), **config.prompts}))
    if config.job == "head":
        tte = replace(tte, head="tte_u", head_layers=config.head.layers)
    return Loaded(hf_model, processor, model_type, tte)


def language_lora_pattern(names: list[str]) -> str:
    """A peft ``target_modules`` regex: the named projections outside the vision tower."""
    return rf"^(?!.*\bvisual\b).*\.({'|'.join(names)})$"


def make_trainable(loaded: Loaded, config: RunConfig) -> None:
    """Freeze and unfreeze per job: LoRA or full fine-tuning (reasoner, embedder), the head alone (head)."""
    model = loaded.hf_model
    model.requires_grad_(False)
    if config.job == "head":
        from tte_fast.heads import TTEUHead

        loaded.head = TTEUHead.from_backbone(model, num_layers=config.head.layers).train()
        model.eval()
        return
    if config.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=language_lora_pattern(lora.target_modules),
        )
        loaded.peft_model = get_peft_model(model, peft_config)  # injects the adapters into `model`
    else:
        model.requires_grad_(True)
    visual = vision_tower(model)
    if visual is not None and config.train.freeze_vision:
        visual.requires_grad_(False)
    if config.train.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()


def trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def save_trained(loaded: Loaded, directory: str, merge: bool = True) -> str:
    """Write the trained model where ``UnifiedTTE.from_pretrained`` reads it (or, with LoRA and
    ``merge=False``, the peft adapter alone in ``directory/adapter`` with the runtime config)."""
    from tte_fast.model import UnifiedTTE

    os.makedirs(directory, exist_ok=True)
    model = loaded.hf_model
    if loaded.peft_model is not None:
        if not merge:
            loaded.peft_model.save_pretrained(os.path.join(directory, ADAPTER_DIR))
            loaded.tte_config.save(directory)
            return directory
        model = loaded.peft_model.merge_and_unload()
    if getattr(model, "supports_gradient_checkpointing", False):  # a no-op unless the run enabled it
        # transformers 5.24 renamed it (activation_...); 5.17 has only the old name.
        disable = (
            getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        )
        disable()
    head = loaded.head.eval() if loaded.head is not None else None
    UnifiedTTE(model, loaded.processor, loaded.model_type, loaded.tte_config, head=head).save_pretrained(
        directory
    )
    return directory
