"""Padding-free prefill: the prompts an engine admits, packed into one row without their padding.

The processor pads a batch of prompts to its longest; a padded prefill computes every layer over
the pad columns too. Packed, the prompts sit end to end in one row ``[1, T]`` (T the sum of their
lengths), their positions (M-RoPE included) restart at 0 per prompt, and a variable-length
attention keeps each prompt to its own tokens. Backends (``prefill_attention``):

- ``flash_varlen``: transformers' ``flash_attention_2`` on the packed positions
  (``flash_attn_varlen_func``); CUDA, float16/bfloat16, the flash-attn package;
- ``xformers``: xformers' block-diagonal causal mask (``tte_fast.runtime.varlen_attention``); CUDA, xformers;
- ``sdpa_varlen``: PyTorch SDPA per prompt (any device; exact but one call per prompt and layer);
- ``padded``: the left-padded batch with the model's own attention (SDPA on CPU);
- ``auto``: the first of flash_varlen, xformers that the model's device, dtype and the installed
  packages allow, else padded (always padded on CPU, where padded SDPA is the fastest exact path).

Only the text layers switch attention for the packed forward; the vision tower keeps its own.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tte_fast.runtime import varlen_attention

BACKENDS = ("padded", "flash_varlen", "xformers", "sdpa_varlen")
PREFILL_ATTENTION = ("auto", *BACKENDS)
IMPLEMENTATION = {
    "flash_varlen": "flash_attention_2",
    "xformers": varlen_attention.XFORMERS,
    "sdpa_varlen": varlen_attention.SDPA_VARLEN,
}
_PER_TOKEN_KEYS = ("input_ids", "mm_token_type_ids", "token_type_ids")


def missing_requirement(name: str, hf_model) -> str | None:
    """What ``name`` needs that this model or environment lacks (None: usable)."""
    param = next(hf_model.parameters())
    if name in ("flash_varlen", "xformers") and param.device.type != "cuda":
        return f"a CUDA device (the model is on {param.device.type})"
    if name == "flash_varlen" and param.dtype not in (torch.float16, torch.bfloat16):
        return f"float16 or bfloat16 weights (the model is {param.dtype})"
    package = {"flash_varlen": "flash_attn", "xformers": "xformers"}.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        return f"the {package.replace('_', '-')} package"
    return None


def choose_prefill_attention(requested: str, hf_model) -> str:
    """The backend for ``requested`` (``auto`` resolved); a clear error when it cannot run here."""
    if requested not in PREFILL_ATTENTION:
        raise ValueError(f"prefill_attention must be one of {PREFILL_ATTENTION}, got {requested!r}")
    if requested == "auto":
        usable = [n for n in ("flash_varlen", "xformers") if missing_requirement(n, hf_model) is None]
        requested = usable[0] if usable else "padded"
    reason = missing_requirement(requested, hf_model)
    if reason is not None:
        raise ValueError(f"prefill_attention={requested!r} needs {reason}")
    varlen_attention.register()
    return requested


@contextmanager
def text_attention(hf_model, implementation: str | None):
    """Run the model's text layers with ``implementation`` (None: unchanged) inside the block."""
    config = hf_model.config.get_text_config()
    previous = config._attn_implementation
    if implementation is None or implementation == previous:
        yield
        return
    # The private field, not the setter: the setter also rewrites sub-configs (the vision tower's).
    config._attn_implementation_internal = implementation
    try:
        yield
    finally:
        config._attn_implementation_internal = previous


@dataclass
class PackedPrompts:
    """One row of prompts end to end: ``inputs`` (per-token tensors ``[1, T]`` and the batch's
    vision inputs), ``position_ids`` (``[1, T]``, or ``[4, 1, T]`` with M-RoPE) and the bounds of
    each prompt (``starts[i]`` .. ``starts[i + 1]``)."""

    inputs: dict
    position_ids: torch.Tensor
    starts: list[int]

    @property
    def last_tokens(self) -> list[int]:
        return [end - 1 for end in self.starts[1:]]

    def columns(self, i: int) -> slice:
        return slice(self.starts[i], self.starts[i + 1])


def pack_prompts(batch: dict, position_ids: torch.Tensor) -> PackedPrompts:
    """Pack a left-padded processor batch and its prefill positions (``prefill_position_ids``)."""
    mask = batch["attention_mask"].bool()
    keep = mask.reshape(-1)
    inputs = {k: v for k, v in batch.items() if k != "attention_mask"}
    for key in _PER_TOKEN_KEYS:
        if batch.get(key) is not None:
            inputs[key] = batch[key].reshape(-1)[keep][None]
    if position_ids.dim() == 3:
        packed_positions = position_ids.reshape(position_ids.shape[0], -1)[:, keep][:, None]
    else:
        packed_positions = position_ids.reshape(-1)[keep][None]
    starts = [0] + mask.sum(-1).cumsum(0).tolist()
    return PackedPrompts(inputs, packed_positions, starts)
