"""Our own forward of the supported text decoders, with fused projections: decode steps and text prefills.

transformers' decoder layers run three query/key/value linears, two MLP input linears, and norms,
residuals and rotary embeddings as separate small ops, each through module dispatch; at decode
batch sizes those ops and calls are a large share of a step. ``FusedDecoder`` runs the same
arithmetic from the checkpoint's own weights with one ``[q; k; v]`` matmul and one ``[gate; up]``
matmul per layer, the residual add folded into the next norm, each elementwise step one pass on CPU
(``tte_fast.kernels.decoder_ops_cpp``: residual add + RMSNorm, rotary, SwiGLU), and the decode
attention over the slot cache in place (``tte_fast.runtime.slot_attention.attend``); on an eager
CPU step, rotary, the cache's column write and the attention are one C++ pass from the ``[q; k; v]``
rows (``slot_attention.step_attention``). Nothing else changes: positions, rotary tables (the model's
own rotary module, M-RoPE included), norms in float32 and every rounding as HF computes them.

``prefill`` runs a text-only forward of left-padded prompts (the engine's admission prefill, the
shared-prefix one, embeddings without thinking) with the same fused projections and C++ passes over
every token, and attention as ``prefill_attention`` (grouped heads stacked on their key head,
transformers' eager arithmetic); its keys and values go into the ``DynamicCache`` transformers'
forward would fill. On bench/peer_vllm.py's 64-prompt bf16 prefill of SmolLM2-135M it ran 1.2-1.4x
as fast as transformers' forward (the matmuls then take 80% of it). The runner decides which
forwards it takes (``Runner.hidden_states``): prompts with pictures or videos go through
transformers' model.

Supported: Llama, Qwen2, Qwen3 and the text stacks of Qwen2-VL, Qwen2.5-VL and Qwen3-VL, with plain
``nn.Linear`` projections (a PEFT-wrapped model runs through transformers). Vision towers stay
transformers'. The fused weights are a copy made on first use (the q/k/v and gate/up
projection weights again: the memory this costs) and made again when a source weight changes (in
place or replaced), so training between decodes never reads stale weights.
"""

from __future__ import annotations

import torch
from torch import nn

from tte_fast.heads import find_decoder
from tte_fast.kernels.decoder_ops_cpp import add_rms_norm, rms_norm_reference, rotary
from tte_fast.runtime.cpu_linear import PackedLinear
from tte_fast.runtime.slot_attention import attend, step_attention

# transformers' output-recording hooks: installed for good by the first forward asked for hidden
# states or attentions, inert outside such a forward (which the runner never asks for).
OUTPUT_CAPTURING = "transformers.utils.output_capturing"
# Scores a prefill's attention holds at once (float32: 64 MiB); longer prompts run in row blocks.
SCORE_BUDGET = 1 << 24

SUPPORTED_TYPES = frozenset(
    {"llama", "qwen2", "qwen3", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text", "qwen3_vl_text"}
)


def watched(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has a forward hook or pre-hook other than transformers' inert
    output-recording ones."""
    for module in modules:
        for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values()):
            if getattr(hook, "__module__", None) != OUTPUT_CAPTURING:
                return True
    return False


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
    """(name, module) of a layer's projections, read from the modules' own dicts: through
    ``nn.Module.__getattr__`` the weight check before every step took 0.57 ms on SmolLM2-135M's 30
    layers (now 0.10 ms)."""
    attn, mlp = attn._modules, mlp._modules
    return [(n, attn[n]) for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
        (n, mlp[n]) for n in ("gate_proj", "up_proj", "down_proj")
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
        self.gate_up = PackedLinear(*_stacked(mlp.gate_proj, mlp.up_proj), gated=True)  # silu(gate) * up
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

    def observed(self) -> bool:
        """Whether forward hooks watch the text stack (its modules then run, as transformers' would)."""
        return watched(*self.text.modules())

    def _source_state(self) -> list[tuple[int, int]]:
        """Where each source weight lives and how often it was written in place."""
        head = self.hf_model.get_output_embeddings().weight
        state = [(head.data_ptr(), head._version)]
        for layer in self.text.layers:
            for _, module in _projections(layer._modules["self_attn"], layer._modules["mlp"]):
                for p in module._parameters.values():  # weight, bias
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
        cpp_step = None
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(x)
            if index == 0 and layer.q_norm is None:  # the C++ step: rotary, cache write and attention
                cpp_step = step_attention(qkv, cos, sin, layer.heads, cache)
            if cpp_step is not None:
                attention = cpp_step(qkv, cache.keys[index], cache.values[index], layer.scaling)
            else:
                attention = self._attention(layer, qkv, cos, sin, bias, cache, index)
            residual, x = self._rest_of_layer(index, residual, attention.reshape(batch, -1))
        return x

    def prefill(self, input_ids, position_ids, mask, cache) -> torch.Tensor:
        """A text prefill of ``input_ids [B, L]`` (left-padded; ``mask [B, P + L]`` covers the ``P``
        columns already in ``cache`` and the new ones) onto ``cache`` (a ``DynamicCache``, or None)
        -> final-norm hidden states ``[B, L, D]``. Call ``refresh`` first (the runner does)."""
        batch, width = input_ids.shape
        hidden = self.text.embed_tokens(input_ids)
        cos, sin = (t.reshape(batch * width, -1) for t in self.rotary(hidden, position_ids))
        past = mask.shape[1] - width
        allowed = prefill_mask(mask.bool(), width)
        norm = self.layers[0].input_norm
        residual, x = add_rms_norm(
            hidden.reshape(batch * width, -1), None, norm.weight, norm.variance_epsilon
        )
        for index, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x).split(layer.splits, dim=-1)
            q, k = _qk_norms(layer, q, k)
            q = rotary(q, cos, sin, layer.heads).view(batch, width, layer.heads, -1).transpose(1, 2)
            k = rotary(k, cos, sin, layer.kv_heads).view(batch, width, layer.kv_heads, -1).transpose(1, 2)
            v = v.reshape(batch, width, layer.kv_heads, -1).transpose(1, 2)
            if cache is not None:
                k, v = cache.update(k, v, index)
            elif past:
                raise ValueError(f"mask covers {mask.shape[1]} columns for {width} new tokens and no cache")
            attention = prefill_attention(q, k, v, allowed, layer.scaling)
            residual, x = self._rest_of_layer(index, residual, attention.reshape(batch * width, -1))
        return x.view(batch, width, -1)

    def _rest_of_layer(self, index: int, residual, attention):
        """Layer ``index`` after its attention ``[rows, H d]``: the output projection added to the
        residual, the post-attention norm, the SwiGLU MLP added, and the next layer's input norm (the
        final norm after the last layer) -> (residual, normed)."""
        layer = self.layers[index]
        norm = layer.post_norm
        residual, x = add_rms_norm(residual, layer.o(attention), norm.weight, norm.variance_epsilon)
        norm = self.layers[index + 1].input_norm if index + 1 < len(self.layers) else self.text.norm
        delta = layer.down(layer.gate_up(x))
        return add_rms_norm(residual, delta, norm.weight, norm.variance_epsilon)

    @staticmethod
    def _attention(layer: _Layer, qkv, cos, sin, bias, cache, index: int) -> torch.Tensor:
        """A layer's attention op by op: q / k norms (Qwen3), rotary, the cache's column write, then
        the slot attention."""
        batch = qkv.shape[0]
        q, k, v = qkv.split(layer.splits, dim=-1)
        q, k = _qk_norms(layer, q, k)
        q = rotary(q, cos, sin, layer.heads)
        k = rotary(k, cos, sin, layer.kv_heads)
        v = v.view(batch, -1, 1, layer.head_dim)
        keys, values = cache.update(k, v, index)
        return attend(q, keys, values, bias, layer.scaling)


def _qk_norms(layer: _Layer, q: torch.Tensor, k: torch.Tensor):
    """Qwen3's per-head RMSNorms of query and key rows ``[rows, heads * d]`` (as they are without)."""
    if layer.q_norm is None:
        return q, k
    rows = q.shape[0]
    return tuple(
        rms_norm_reference(t.view(rows, -1, layer.head_dim), n.weight, n.variance_epsilon).view(rows, -1)
        for t, n in ((q, layer.q_norm), (k, layer.k_norm))
    )


def _mrope_layout(table: torch.Tensor, sections: list[int]) -> torch.Tensor:
    """``[3, B, L, d]`` -> ``[B, L, d]``: each section of the head dim from its M-RoPE row (t, h, w)."""
    return torch.cat([part[i % 3] for i, part in enumerate(table.split(sections, dim=-1))], dim=-1)


def prefill_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, 1, L, P + L]`` booleans: new token ``i`` sees column ``j`` where ``mask`` is set and
    ``j <= P + i`` (causal), and always itself, so that a padding row has a finite softmax."""
    columns = mask.shape[1]
    query = torch.arange(columns - width, columns, device=mask.device)[:, None]
    key = torch.arange(columns, device=mask.device)[None]
    return ((mask[:, None, :] & (key <= query)) | (key == query))[:, None]


def prefill_attention(query, key, value, allowed, scale: float) -> torch.Tensor:
    """Causal attention of the new tokens: ``query [B, H, L, d]``, ``key/value [B, H_kv, P + L, d]``,
    ``allowed [B, 1, L, P + L]`` -> ``[B, L, H, d]``. A query's grouped heads are stacked onto their key
    head (no repeated keys); scores and weighted sum in the input dtype, softmax in float32 (HF's
    eager arithmetic). Long prompts run in blocks of query rows (at most ``SCORE_BUDGET`` scores at
    once), each over the columns its last row sees."""
    batch, heads, width, _ = query.shape
    past = key.shape[2] - width
    rows = max(1, SCORE_BUDGET // (batch * heads * key.shape[2]))
    blocks = []
    for start in range(0, width, rows):
        end = min(start + rows, width)
        seen = past + end
        blocks.append(
            _attention_block(
                query[:, :, start:end],
                key[:, :, :seen],
                value[:, :, :seen],
                allowed[:, :, start:end, :seen],
                scale,
            )
        )
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


def _attention_block(query, key, value, allowed, scale: float) -> torch.Tensor:
    batch, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * width, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scale
    scores = scores.view(batch, kv_heads, heads // kv_heads, width, -1)
    scores = scores.masked_fill(~allowed[:, :, None], float("-inf"))
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights.view(batch, kv_heads, heads // kv_heads * width, -1), value)
    return out.view(batch, heads, width, dim).transpose(1, 2)
