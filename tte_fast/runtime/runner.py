"""The runner: prefill and decode steps of one HF model over a KV cache it is handed.

It drives the backbone (``hf_model.base_model``, whose output is the final-norm hidden state) and
the LM head directly, with explicit positions and masks, so both schedulers (static batches,
``tte_fast.runtime.static``; continuous slots, ``tte_fast.runtime.engine``) run the same forward.
``compile=True`` wraps the decode step in ``torch.compile`` (CUDA graphs on GPU via
``mode="reduce-overhead"``); a string (or a backend callable) names the compile backend. Compiled
steps see batches and cache lengths padded to powers of two (``tte_fast.runtime.static_cache``), so
the number of graphs stays bounded.
"""

from __future__ import annotations

import inspect

import torch

from tte_fast.runtime.static_cache import CompiledShapes, compiled_length, eager_length


def model_inputs(backbone, batch: dict) -> dict:
    """The processor outputs the backbone's forward accepts (pixel values, grids, token types)."""
    accepted = inspect.signature(backbone.forward).parameters
    skip = {"input_ids", "attention_mask", "position_ids"}
    return {k: v for k, v in batch.items() if k in accepted and k not in skip and v is not None}


def cache_argument(backbone) -> str:
    """The KV cache keyword of the installed transformers (``cache`` in 5.24, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


class Runner:
    """Forward passes of ``hf_model``'s text stack (vision towers run inside the prefill)."""

    def __init__(self, hf_model, compile=False):
        self.hf_model = hf_model
        self.backbone = hf_model.base_model
        self.lm_head = hf_model.get_output_embeddings()
        self.cache_kw = cache_argument(self.backbone)
        self.pass_cache_position = "cache_position" in inspect.signature(self.backbone.forward).parameters
        self.compiled = bool(compile)
        self.step = self.decode_step
        if compile:
            backend = "inductor" if compile is True else compile
            graphs = backend == "inductor" and self.device.type == "cuda"
            compiled = torch.compile(
                self.decode_step, backend=backend, mode="reduce-overhead" if graphs else None, dynamic=False
            )
            self.step = _graph_step(compiled) if graphs else compiled
            context = getattr(hf_model.config.get_text_config(), "max_position_embeddings", 32768)
            self.shapes = CompiledShapes(max_length=context)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def cache_length(self, total: int, padded: bool | None = None) -> int:
        """Cache columns for ``total`` positions: the compiled step's power-of-two buckets (``padded``,
        default: when compiled), else multiples of 64."""
        padded = self.compiled if padded is None else padded
        return compiled_length(total) if padded else eager_length(total)

    def hidden_states(self, input_ids, position_ids, mask, cache, cache_position=None, **extra):
        """Backbone forward of new tokens onto ``cache`` (None: no cache); their final-norm hidden
        states ``[B, L, D]``.

        ``cache_position`` (the new tokens' cache slots) is passed only to transformers versions
        that still take it; newer ones track the slot inside the cache."""
        kwargs = {self.cache_kw: cache, "use_cache": cache is not None, **extra}
        if self.pass_cache_position:
            kwargs["cache_position"] = cache_position
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, **kwargs)
        return out.last_hidden_state

    def forward(self, input_ids, position_ids, mask, cache, cache_position=None, **extra) -> torch.Tensor:
        """The final-norm hidden state of the last new token of each row, ``[B, D]``."""
        return self.hidden_states(input_ids, position_ids, mask, cache, cache_position, **extra)[:, -1]

    def decode_step(self, input_ids, position_ids, mask, cache, cache_position=None):
        """One shape-static step: ``[B, 1]`` tokens -> (final-norm hidden ``[B, D]``, logits ``[B, V]``)."""
        hidden = self.forward(input_ids, position_ids, mask, cache, cache_position)
        return hidden, self.lm_head(hidden).float()

    def cache_positions(self, start: int, length: int, device) -> torch.Tensor | None:
        if not self.pass_cache_position:
            return None
        return torch.arange(start, start + length, device=device)


def _graph_step(compiled):
    """Mark each call as a new CUDA-graph iteration: the previous step's outputs are consumed by then."""

    def step(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return step
