"""Our own decode-step forward of the supported text decoders, with fused projections.

transformers' decoder layers run three query/key/value linears, two MLP input linears, and norms,
residuals and rotary embeddings as separate small ops, each through module dispatch; at decode
batch sizes those ops and calls are a large share of a step. ``FusedDecoder`` runs the same
arithmetic from the checkpoint's own weights with one ``[q; k; v]`` matmul and one ``[gate; up]``
matmul per layer, the residual add folded into the next norm, each elementwise step one pass on CPU
(``tte_fast.kernels.decoder_ops_cpp``: residual add + RMSNorm, rotary, SwiGLU), and the decode
attention over the slot cache in place (``tte_fast.runtime.slot_attention.attend``); on an eager
CPU step, rotary, the cache's column write and the attention are one C++ pass from the ``[q; k; v]``
rows (``slot_attention.attend_step``). Nothing else changes: positions, rotary tables (the model's
own rotary module, M-RoPE included), norms in float32 and every rounding as HF computes them.

Supported: Llama, Qwen2, Qwen3 and the text stacks of Qwen2-VL, Qwen2.5-VL and Qwen3-VL, with plain
``nn.Linear`` projections (a PEFT-wrapped model runs through transformers). Vision towers and
prefills stay transformers'. The fused weights are a copy made on first use (the q/k/v and gate/up
projection weights again: the memory this costs) and made again when a source weight changes (in
place or replaced), so training between decodes never reads stale weights.
"""

from __future__ import annotations

import torch
from torch import nn

from tte_fast.heads import find_decoder
from tte_fast.kernels.decoder_ops_cpp import add_rms_norm, rms_norm_reference, rotary, silu_mul
from tte_fast.runtime.cpu_linear import PackedLinear
from tte_fast.runtime.slot_attention import attend, attend_step

SUPPORTED_TYPES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text", "qwen3_vl_text"}
)


def unsupported_reason(hf_model) -> str | None:
    """Why ``hf_model``'s text decoder cannot run fused (None: it can)."""
    config = hf_model.config.get_text_config()
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(sorted(SUPPORTED_TYPES))})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (supported: 'silu')"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    text = find_decoder(hf_model)
    for i, layer in enumerate(text.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for name, module in _projections(attn, mlp):
            if type(module) is not nn.Linear:
                return f"layer {i} {name} is a {type(module).__name__}, not a plain Linear"
    return None


def _projections(attn, mlp):
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [(n, getattr(attn, n)) for n in names] + [
        (n, getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj")
    ]


def _stacked(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights of ``linears`` stacked as one projection's, and their biases (None: none have one)."""
    weight = torch.cat([m.weight for m in linears])
    return weight, None if linears[0].bias is None else torch.cat([m.bias for m in linears])


class _Layer:
    """One decoder layer's weights: fused ``[q; k; v]`` and ``[gate; up]``, the rest as loaded."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = PackedLinear(*_stacked(attn.q_proj, attn.k_proj, attn.v_proj))
        self.splits = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
        self.o = PackedLinear(attn.o_proj.weight, attn.o_proj.bias)
        self.gate_up = PackedLinear(*_stacked(mlp.gate_proj, mlp.up_proj))
        self.down = PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias)
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.scaling = attn.scaling
        self.head_dim = attn.head_dim
        self.heads, self.kv_heads = (n // self.head_dim for n in self.splits[:2])


class FusedDecoder:
    """Decode steps of ``hf_model``'s text stack with fused projections (see the module docstring)."""

    def __init__(self, hf_model):
        reason = unsupported_reason(hf_model)
        if reason is not None:
            raise ValueError(f"the fused decoder does not support this model: {reason}")
        self.hf_model = hf_model
        self.text = find_decoder(hf_model)
        config = hf_model.config.get_text_config()
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        self.mrope_section = rope.get("mrope_section")
        self.layers: list[_Layer] = []
        self.lm_head: PackedLinear | None = None
        self._sources: list[tuple[int, int]] = []

    @classmethod
    def for_model(cls, hf_model) -> FusedDecoder | None:
        """The fused decoder of ``hf_model``, or None where it is not supported."""
        return cls(hf_model) if unsupported_reason(hf_model) is None else None

    def _source_state(self) -> list[tuple[int, int]]:
        """Where each source weight lives and how often it was written in place."""
        head = self.hf_model.get_output_embeddings().weight
        state = [(head.data_ptr(), head._version)]
        for layer in self.text.layers:
            for _, module in _projections(layer.self_attn, layer.mlp):
                for p in (module.weight, module.bias):
                    if p is not None:
                        state.append((p.data_ptr(), p._version))
        return state

    def refresh(self) -> None:
        """(Re)build the fused weights if any source weight changed since they were made."""
        state = self._source_state()
        if state == self._sources:
            return
        with torch.inference_mode(False), torch.no_grad():
            self.layers = [_Layer(layer) for layer in self.text.layers]
            head = self.hf_model.get_output_embeddings()
            self.lm_head = PackedLinear(head.weight, head.bias)
        self._sources = state

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor):
        """cos and sin ``[B, L, head_dim]`` from the model's own rotary module; ``position_ids`` as the
        runner passes them: ``[B, L]``, or ``[4, B, L]`` (text row, then the three M-RoPE rows)."""
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        cos, sin = self.text.rotary_emb(hidden, position_ids)
        if cos.ndim == 4:  # [3, B, L, d]: older M-RoPE modules leave the sections to the attention
            sections = list(self.mrope_section) * 2
            cos, sin = (_mrope_layout(t, sections) for t in (cos, sin))
        return cos, sin

    def forward(self, input_ids, position_ids, bias, cache) -> torch.Tensor:
        """One decode step of ``[B, 1]`` tokens onto ``cache`` (a slot cache; ``bias`` its attention
        bias) -> final-norm hidden states ``[B, D]``. Call ``refresh`` first (the runner does)."""
        batch = input_ids.shape[0]
        hidden = self.text.embed_tokens(input_ids)
        cos, sin = self.rotary(hidden, position_ids)
        cos, sin = cos[:, -1], sin[:, -1]
        norm = self.layers[0].input_norm
        residual, x = add_rms_norm(hidden.reshape(batch, -1), None, norm.weight, norm.variance_epsilon)
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(x)
            attention = None
            if layer.q_norm is None:  # the C++ step: rotary, cache write and attention in one pass
                attention = attend_step(qkv, cos, sin, layer.heads, cache, index, layer.scaling)
            if attention is None:
                attention = self._attention(layer, qkv, cos, sin, bias, cache, index)
            norm = layer.post_norm
            residual, x = add_rms_norm(
                residual, layer.o(attention.reshape(batch, -1)), norm.weight, norm.variance_epsilon
            )
            norm = self.layers[index + 1].input_norm if index + 1 < len(self.layers) else self.text.norm
            delta = layer.down(silu_mul(layer.gate_up(x)))
            residual, x = add_rms_norm(residual, delta, norm.weight, norm.variance_epsilon)
        return x

    @staticmethod
    def _attention(layer: _Layer, qkv, cos, sin, bias, cache, index: int) -> torch.Tensor:
        """A layer's attention op by op: q / k norms (Qwen3), rotary, the cache's column write, then
        the slot attention."""
        batch = qkv.shape[0]
        q, k, v = qkv.split(layer.splits, dim=-1)
        if layer.q_norm is not None:
            q, k = (
                rms_norm_reference(t.view(batch, -1, layer.head_dim), n.weight, n.variance_epsilon).view(
                    batch, -1
                )
                for t, n in ((q, layer.q_norm), (k, layer.k_norm))
            )
        q = rotary(q, cos, sin, layer.heads)
        k = rotary(k, cos, sin, layer.kv_heads)
        v = v.view(batch, -1, 1, layer.head_dim)
        keys, values = cache.update(k, v, index)
        return attend(q, keys, values, bias, layer.scaling)


def _mrope_layout(table: torch.Tensor, sections: list[int]) -> torch.Tensor:
    """``[3, B, L, d]`` -> ``[B, L, d]``: each section of the head dim from its M-RoPE row (t, h, w)."""
    return torch.cat([part[i % 3] for i, part in enumerate(table.split(sections, dim=-1))], dim=-1)
