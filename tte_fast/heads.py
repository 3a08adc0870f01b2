"""The TTE_u embedding head: a trainable self-attention stack over layer L-k hidden states.

The paper's unified variant keeps the reasoner backbone frozen and trains a head initialised from
the backbone's last k decoder layers plus its final norm. The head reads the hidden states that
enter decoder layer L-k. Generation already computes those for the prompt and for every generated
token, so :meth:`TTEUHead.capture` records them (with the rotary ``position_embeddings`` each call
received, so Qwen-VL M-RoPE positions are never recomputed) and :meth:`TTEUHead.embed` runs the k
layers once over the whole sequence. The backbone's first L-k layers are never re-run.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

HEAD_WEIGHTS_NAME = "tte_head.safetensors"
HEAD_CONFIG_NAME = "tte_head.json"
_FORMAT_VERSION = 1


def find_decoder(hf_model: nn.Module) -> nn.Module:
    """The text decoder stack of a HF causal LM or Qwen-VL model: the module that owns the decoder
    ``layers`` and the final ``norm`` (``model.language_model`` on Qwen-VL, ``model`` on causal LMs)."""
    candidates = []
    get_decoder = getattr(hf_model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(Exception):
            candidates.append(get_decoder())
    candidates += [module for _, module in hf_model.named_modules()]
    for module in candidates:
        layers = getattr(module, "layers", None)
        norm = getattr(module, "norm", None)
        is_stack = isinstance(layers, nn.ModuleList) and len(layers) > 0 and isinstance(norm, nn.Module)
        if is_stack and (hasattr(module, "embed_tokens") or hasattr(module, "rotary_emb")):
            return module
    raise ValueError(
        f"cannot find the decoder layers of {type(hf_model).__name__}: expected a submodule with "
        "`layers` (nn.ModuleList) and a final `norm`, as in HF Qwen2/Qwen-VL models"
    )


@dataclass
class CapturedStates:
    """What decoder layer L-k received on each forward call, in call order (prefill, decode steps,
    the embedding-token step): hidden states [B, t, D] and rotary (cos, sin) with time on dim -2."""

    hidden_states: list[torch.Tensor] = field(default_factory=list)
    position_embeddings: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hidden_states)

    def clear(self) -> None:
        self.hidden_states.clear()
        self.position_embeddings.clear()

    def concat(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """All records joined along time: hidden [B, T_total, D] and (cos, sin)."""
        if not self.hidden_states:
            raise ValueError("no hidden states were captured: run the backbone inside head.capture(model)")
        batch = self.hidden_states[0].shape[0]
        for i, h in enumerate(self.hidden_states):
            if h.shape[0] != batch:
                raise ValueError(f"captured call {i} has batch size {h.shape[0]}, call 0 had {batch}")
        hidden = torch.cat(self.hidden_states, dim=1)
        cos = torch.cat([_batched(pe[0], batch) for pe in self.position_embeddings], dim=-2)
        sin = torch.cat([_batched(pe[1], batch) for pe in self.position_embeddings], dim=-2)
        return hidden, (cos, sin)


def _batched(rotary: torch.Tensor, batch: int) -> torch.Tensor:
    """Rotary tables are [..., B, t, d]; a forward without explicit positions gives B = 1."""
    if rotary.dim() < 3 or rotary.shape[-3] not in (1, batch):
        raise ValueError(f"rotary table of shape {tuple(rotary.shape)} does not match batch size {batch}")
    return rotary.expand(*rotary.shape[:-3], batch, *rotary.shape[-2:])


def _deepstack_layers(hf_model: nn.Module) -> int:
    """How many leading decoder layers get visual features added to their output (Qwen3-VL deepstack)."""
    vision_config = getattr(getattr(hf_model, "config", None), "vision_config", None)
    return len(getattr(vision_config, "deepstack_visual_indexes", None) or ())


def _check_num_layers(num_layers, total: int, deepstack: int) -> int:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        raise TypeError(f"num_layers must be an int, got {num_layers!r}")
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers={num_layers} is out of range: the backbone has {total} decoder layers")
    if num_layers > total - deepstack:
        # The head would start before the last deepstack injection and never see those visual features.
        raise ValueError(
            f"num_layers={num_layers} is too deep: this backbone adds deepstack visual features after its "
            f"first {deepstack} decoder layers, so the head may span at most {total - deepstack} layers"
        )
    return num_layers


def _attention_mask(attention_mask: torch.Tensor, window: int | None, additive_dtype: torch.dtype | None):
    """[B, 1, T, T] mask: query i sees key j iff j <= i (and i - j < window) and j is real.

    Boolean (True = attend) for SDPA; additive in ``additive_dtype`` for eager attention. Each
    position also sees itself, so masked query rows (pads, tokens decoded after a row stopped) never
    get an empty softmax (no NaN); no real query ever sees a masked key, so they cannot leak.
    """
    t = attention_mask.shape[1]
    pos = torch.arange(t, device=attention_mask.device)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed &= (pos[:, None] - pos[None, :]) < window
    allowed = allowed[None] & attention_mask.bool()[:, None, :]
    allowed |= torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    if additive_dtype is None:
        return allowed[:, None]
    bias = torch.zeros(allowed.shape, dtype=additive_dtype, device=attention_mask.device)
    bias.masked_fill_(~allowed, torch.finfo(additive_dtype).min)
    return bias[:, None]


class _StopForward(Exception):
    """Raised by the source-layer hook to end a forward once the head's input is recorded."""


class TTEUHead(nn.Module):
    """k decoder layers plus a final norm that turn layer L-k hidden states into one unit vector."""

    def __init__(self, layers: nn.ModuleList, norm: nn.Module, num_backbone_layers: int):
        super().__init__()
        self.layers = layers
        self.norm = norm
        self.num_backbone_layers = num_backbone_layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def source_layer(self) -> int:
        """Index of the backbone decoder layer whose input the head reads (L - k)."""
        return self.num_backbone_layers - self.num_layers

    @classmethod
    def from_backbone(cls, hf_model: nn.Module, num_layers: int = 8) -> TTEUHead:
        """Deep copies of the backbone's last ``num_layers`` decoder layers and final norm, trainable.

        The backbone itself is not modified; captured states are detached, so it stays frozen."""
        decoder = find_decoder(hf_model)
        total = len(decoder.layers)
        k = _check_num_layers(num_layers, total, _deepstack_layers(hf_model))
        # One deepcopy for all parts, so the copied layers share one copied config.
        parts = copy.deepcopy(
            nn.ModuleDict({"layers": nn.ModuleList(decoder.layers[total - k :]), "norm": decoder.norm})
        )
        config = getattr(parts["layers"][0].self_attn, "config", None)
        if config is not None and config._attn_implementation not in ("eager", "sdpa"):
            # The head needs an arbitrary [B, 1, T, T] mask (gaps for stopped rows): flash kernels take none.
            config._attn_implementation = "sdpa"
        head = cls(parts["layers"], parts["norm"], total)
        head.requires_grad_(True)
        return head

    def capture(self, hf_model: nn.Module) -> contextlib.AbstractContextManager[CapturedStates]:
        """Record what decoder layer L-k of ``hf_model`` receives on every forward call inside the block.

        Hooks run on module calls, so CUDA-graph replays (which skip Python) are not recorded."""
        return self._hooked(hf_model, stop=False)

    @contextlib.contextmanager
    def _hooked(self, hf_model: nn.Module, stop: bool) -> Iterator[CapturedStates]:
        decoder = find_decoder(hf_model)
        if len(decoder.layers) != self.num_backbone_layers:
            raise ValueError(
                f"this head was built for a backbone of {self.num_backbone_layers} decoder layers, "
                f"{type(hf_model).__name__} has {len(decoder.layers)}"
            )
        layer = decoder.layers[self.source_layer]
        signature = inspect.signature(layer.forward)
        records = CapturedStates()

        def hook(module, args, kwargs):
            bound = signature.bind_partial(*args, **kwargs).arguments
            hidden, pe = bound.get("hidden_states"), bound.get("position_embeddings")
            if hidden is None or pe is None:
                raise ValueError(
                    f"decoder layer {self.source_layer} got no hidden_states or position_embeddings to record"
                )
            # Copies: a decode loop may reuse static buffers between steps.
            records.hidden_states.append(hidden.detach().clone())
            records.position_embeddings.append((pe[0].detach().clone(), pe[1].detach().clone()))
            if stop:
                raise _StopForward

        handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield records
        finally:
            handle.remove()

    @torch.no_grad()
    def source_states(self, hf_model: nn.Module, **model_inputs) -> tuple[torch.Tensor, tuple]:
        """Layer L-k input states [B, T, D] and rotary tables of one fresh backbone forward over
        ``model_inputs`` (processor outputs), for training the head with :meth:`forward`.

        The forward stops at layer L-k: the backbone's last k layers and LM head are never run."""
        with self._hooked(hf_model, stop=True) as records, contextlib.suppress(_StopForward):
            hf_model(**{**model_inputs, "use_cache": False})
        if len(records) != 1:
            raise RuntimeError(
                f"the backbone forward reached decoder layer {self.source_layer} {len(records)} times"
            )
        return records.hidden_states[0], records.position_embeddings[0]

    def embed(self, captured: CapturedStates, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, D] (float32, unit norm) from states captured during generation.

        ``attention_mask`` [B, T_total] covers every captured position in call order: 1 exactly for
        the tokens of the row's sequence, 0 for pads and for tokens decoded after the row stopped."""
        hidden, position_embeddings = captured.concat()
        return self(hidden, attention_mask, position_embeddings)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Run the head over layer L-k states [B, T, D]; pool each row's last real token."""
        from tte_fast.kernels import pool_normalize

        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must be [B, T, D], got shape {tuple(hidden_states.shape)}")
        b, t, _ = hidden_states.shape
        if tuple(attention_mask.shape) != (b, t):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(b, t)} "
                "(one 0/1 entry per position fed to the backbone, in order)"
            )
        if not isinstance(position_embeddings, (tuple, list)) or len(position_embeddings) != 2:
            raise TypeError("position_embeddings must be the (cos, sin) pair the decoder layers receive")
        cos, sin = position_embeddings
        if cos.shape[-2] != t or sin.shape[-2] != t:
            raise ValueError(f"position_embeddings cover {cos.shape[-2]} positions, hidden_states has {t}")
        if cos.dim() < 3 or cos.shape[-3] not in (1, b):
            raise ValueError(f"position_embeddings of shape {tuple(cos.shape)} do not match batch size {b}")
        empty = (attention_mask != 0).sum(dim=1) == 0
        if empty.any():
            raise ValueError(
                f"rows {empty.nonzero().flatten().tolist()} of attention_mask have no real token"
            )

        param = next(self.parameters())
        h = hidden_states.to(device=param.device, dtype=param.dtype)
        mask = attention_mask.to(param.device)
        pe = (cos.to(param.device, param.dtype), sin.to(param.device, param.dtype))
        config = getattr(self.layers[0].self_attn, "config", None)
        additive = param.dtype if getattr(config, "_attn_implementation", "sdpa") == "eager" else None
        masks: dict[int | None, torch.Tensor] = {}  # one per sliding-window size
        for layer in self.layers:
            window = getattr(layer.self_attn, "sliding_window", None)
            if window not in masks:
                masks[window] = _attention_mask(mask, window, additive)
            h = layer(h, attention_mask=masks[window], position_embeddings=pe)
        h = self.norm(h)
        return pool_normalize(h, mask)

    def save_pretrained(self, save_directory: str) -> None:
        """Write ``tte_head.safetensors`` (weights) and ``tte_head.json`` (shape) into the folder."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, os.path.join(save_directory, HEAD_WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {
            "format_version": _FORMAT_VERSION,
            "num_layers": self.num_layers,
            "num_backbone_layers": self.num_backbone_layers,
        }
        with open(os.path.join(save_directory, HEAD_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, hf_model: nn.Module) -> TTEUHead:
        """A head saved by :meth:`save_pretrained`, built on ``hf_model``'s layer structure."""
        from safetensors.torch import load_file

        config_file = os.path.join(path, HEAD_CONFIG_NAME)
        weights_file = os.path.join(path, HEAD_WEIGHTS_NAME)
        for needed in (config_file, weights_file):
            if not os.path.isfile(needed):
                raise FileNotFoundError(f"no TTE_u head at {path!r}: {os.path.basename(needed)} is missing")
        with open(config_file, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version", _FORMAT_VERSION) > _FORMAT_VERSION:
            raise ValueError(
                f"the head at {path!r} has format version {meta['format_version']}; "
                f"this version of tte_fast reads up to {_FORMAT_VERSION}"
            )
        total = len(find_decoder(hf_model).layers)
        if meta.get("num_backbone_layers", total) != total:
            raise ValueError(
                f"the head at {path!r} was trained on a backbone of {meta['num_backbone_layers']} decoder "
                f"layers, {type(hf_model).__name__} has {total}"
            )
        head = cls.from_backbone(hf_model, num_layers=meta["num_layers"])
        param = next(head.parameters())
        head.load_state_dict(load_file(weights_file, device=str(param.device)), strict=True)
        return head
