"""The runner: prefill and decode steps of one HF model over a KV cache it is handed.

It drives the backbone (``hf_model.base_model``, whose output is the final-norm hidden state) and
the LM head directly, with explicit positions and masks, so both schedulers (static batches,
``tte_fast.runtime.static``; continuous slots, ``tte_fast.runtime.engine``) run the same forward.
Decode steps onto a slot cache (the engine's) run through our own fused forward
(``tte_fast.runtime.fused_decoder``) where the model's text decoder is supported, unless
``decoder="transformers"``; so do text-only forwards onto a ``DynamicCache`` (the prefills of both
schedulers, the static scheduler's eager steps) on CPU outside autograd (``FusedDecoder.prefill``).
Forwards with pictures or videos, onto other caches, under autograd or observed by forward hooks
(the TTE_u head's capture) run transformers' modules.
``compile=True`` wraps the decode step in ``torch.compile`` (CUDA graphs on GPU via
``mode="reduce-overhead"``, inductor's C++ kernels on CPU); a string (or a backend callable) names
the compile backend. Compiled steps see batches and cache lengths padded to powers of two
(``tte_fast.runtime.static_cache``), so the number of graphs stays bounded.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from tte_fast.runtime.fused_decoder import FusedDecoder, unsupported_reason, watched
from tte_fast.runtime.slot_cache import SlotCache
from tte_fast.runtime.static_cache import CompiledShapes, compiled_length, eager_length

DECODERS = ("auto", "fused", "transformers")
# Processor outputs a text-only forward may carry (per-token types, all text).
TEXT_INPUTS = frozenset({"mm_token_type_ids", "token_type_ids"})


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

    def __init__(self, hf_model, compile=False, decoder: str = "auto"):
        self.hf_model = hf_model
        self.fused = _fused_decoder(hf_model, decoder)
        self.backbone = hf_model.base_model
        self.lm_head = self._model_head = hf_model.get_output_embeddings()
        self.cache_kw = cache_argument(self.backbone)
        self.pass_cache_position = "cache_position" in inspect.signature(self.backbone.forward).parameters
        self.compiled = bool(compile)
        self.step = self.decode_step
        if compile:
            backend = "inductor" if compile is True else compile
            graphs = backend == "inductor" and self.device.type == "cuda"
            compiled = torch.compile(
                self._step, backend=backend, mode="reduce-overhead" if graphs else None, dynamic=False
            )
            self.step = _refreshed(self, _graph_step(compiled) if graphs else compiled)
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
        if self._fused_forward(input_ids, mask, cache, extra):
            self.fused.refresh()
            return self.fused.prefill(input_ids, position_ids, mask, cache)
        kwargs = {self.cache_kw: cache, "use_cache": cache is not None, **extra}
        if self.pass_cache_position:
            kwargs["cache_position"] = cache_position
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, **kwargs)
        return out.last_hidden_state

    def forward(self, input_ids, position_ids, mask, cache, cache_position=None, **extra) -> torch.Tensor:
        """The final-norm hidden state of the last new token of each row, ``[B, D]``."""
        return self.hidden_states(input_ids, position_ids, mask, cache, cache_position, **extra)[:, -1]

    def decode_hidden(self, input_ids, position_ids, mask, cache, cache_position=None) -> torch.Tensor:
        """A decode step's final-norm hidden states ``[B, D]``: fused onto a slot cache where supported."""
        self._refresh(cache)
        return self._hidden(input_ids, position_ids, mask, cache, cache_position)

    def decode_step(self, input_ids, position_ids, mask, cache, cache_position=None):
        """One shape-static step: ``[B, 1]`` tokens -> (final-norm hidden ``[B, D]``, logits ``[B, V]``).

        The logits stay in the head's dtype: a greedy pick reads them as they are (the argmax of a
        bfloat16 row is that of its exact float32 copy), and what computes on them in float32 as HF
        does (``SeenTokens.apply``, ``sampling_probs``) converts the rows it gets; at
        batch 64 of a 49k vocabulary the whole float32 copy took 1.5 ms of a 53 ms bf16 step."""
        self._refresh(cache)
        return self._step(input_ids, position_ids, mask, cache, cache_position)

    def _step(self, input_ids, position_ids, mask, cache, cache_position=None):
        """``decode_step`` without the fused weights' check: what ``torch.compile`` traces."""
        hidden = self._hidden(input_ids, position_ids, mask, cache, cache_position)
        return hidden, self._lm_head(cache)(hidden)

    def _lm_head(self, cache):
        """The fused decoder's packed LM head, unless the model's head is observed (forward hooks) or
        replaced on the runner: then every step goes through it, as transformers' forward would."""
        head = self.lm_head
        observed = head is not self._model_head or watched(head)
        return self.fused.lm_head if self._fuses(cache) and not observed else head

    def _hidden(self, input_ids, position_ids, mask, cache, cache_position=None) -> torch.Tensor:
        if self._fuses(cache):
            return self.fused.forward(input_ids, position_ids, mask, cache)
        return self.forward(input_ids, position_ids, mask, cache, cache_position)

    def _fused_forward(self, input_ids, mask, cache, extra: dict) -> bool:
        """Whether ``hidden_states`` runs the fused decoder's forward (see the module docstring): text
        only, onto no cache or a ``DynamicCache`` whose columns and the new ones ``mask`` covers."""
        if self.fused is None or mask is None or mask.dim() != 2 or input_ids.device.type != "cpu":
            return False
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or not TEXT_INPUTS.issuperset(extra):
            return False
        if cache is not None and type(cache) is not DynamicCache:
            return False
        past = 0 if cache is None else cache.get_seq_length()
        return mask.shape[1] == past + input_ids.shape[1] and not self.fused.observed()

    def _fuses(self, cache) -> bool:
        return self.fused is not None and isinstance(cache, SlotCache)

    def _refresh(self, cache) -> None:
        """Remake the fused weights if a source weight changed (outside any compiled graph)."""
        if self._fuses(cache):
            self.fused.refresh()

    def cache_positions(self, start: int, length: int, device) -> torch.Tensor | None:
        if not self.pass_cache_position:
            return None
        return torch.arange(start, start + length, device=device)


def _refreshed(runner: Runner, compiled_step):
    """The compiled step, with the fused weights checked before each call (outside the graph)."""

    def step(input_ids, position_ids, mask, cache, cache_position=None):
        runner._refresh(cache)
        return compiled_step(input_ids, position_ids, mask, cache, cache_position)

    return step


def _fused_decoder(hf_model, decoder: str) -> FusedDecoder | None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "transformers":
        return None
    reason = unsupported_reason(hf_model)
    if reason is not None and decoder == "fused":
        raise ValueError(f"decoder='fused' cannot run this model: {reason}")
    return None if reason is not None else FusedDecoder(hf_model)


def _graph_step(compiled):
    """Mark each call as a new CUDA-graph iteration: the previous step's outputs are consumed by then."""

    def step(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return step
