"""The runtime's own settings, saved as ``tte_config.json`` next to the weights."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from tte_fast.prompting.prompts import PromptConfig
from tte_fast.runtime.options import EMBED_FALLBACKS
from tte_fast.settings.checks import positive_int
from tte_fast.settings.schema import ConfigError, build

TTE_CONFIG_FILE = "tte_config.json"
HEADS = ("last_token", "tte_u")
# Where a prompt that does not think is embedded: at the embedding token appended to it, at its last
# token (nothing appended), or at the last occurrence of ``prompt_embed_token`` inside it.
PROMPT_EMBEDS = ("append", "last", "token")
# Position ids: the model's own (M-RoPE over image grids for Qwen-VL), or 0, 1, 2, ... for every token.
POSITIONS = ("model", "sequential")
# Where sampling settings not passed come from: DecodeOptions' defaults (greedy, no penalty), or the
# checkpoint's generation_config.json, as its authors run it (Qwen-VL: greedy over penalised logits).
GENERATION_SOURCES = ("greedy", "checkpoint")
# The checkpoint's own embedding token wins when the tokenizer has it.
EMB_TOKEN = "<emb>"


@dataclass
class TTEConfig:
    """Head type and its parameters, prompts, embedding token and generation budgets.

    ``embed_token=None`` means: ``<emb>`` if the tokenizer has it, else ``fallback_embed_token``
    (the chat template's end-of-turn token, Qwen's EOS). A model that generates its embedding token
    stops there and is embedded at it; one that stops otherwise is embedded as ``embed_fallback``
    says (``"force"``: at the embedding token fed after its trace; ``"last_sampled"``: at its last
    sampled token, fed; ``"last_fed"``: at the last token it fed).
    ``stop_tokens`` (None: the checkpoint's EOS tokens) replace the tokens that end a trace; the
    embedding token always ends one. ``generation`` is where unset sampling options come from
    (``"checkpoint"``: its generation_config). ``recipe`` names the recipe these settings came from
    (``tte_fast.checkpoint.recipes``); ``min_pixels`` / ``max_pixels`` override the image processor's.
    """

    head: str = "last_token"
    head_layers: int = 8
    embed_token: str | None = None
    fallback_embed_token: str = "<|im_end|>"
    think_end_token: str = "</think>"
    # Strings that end a trace where the generated text completes them (kept, like HF's stop_strings).
    stop_strings: list[str] = field(default_factory=list)
    max_think_tokens: int = 256
    max_answer_tokens: int = 32
    prompts: PromptConfig = field(default_factory=PromptConfig)
    stop_tokens: list[str] | None = None
    embed_fallback: str = "force"
    prompt_embed: str = "append"
    prompt_embed_token: str | None = None
    positions: str = "model"
    generation: str = "greedy"
    min_pixels: int | None = None
    max_pixels: int | None = None
    recipe: str | None = None

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {HEADS}")
        positive_int("head_layers", self.head_layers)
        if isinstance(self.stop_strings, str) or not all(isinstance(t, str) and t for t in self.stop_strings):
            raise ValueError(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")
        self.stop_strings = list(self.stop_strings)
        if self.stop_tokens is not None:
            if isinstance(self.stop_tokens, str) or not all(
                isinstance(t, str) and t for t in self.stop_tokens
            ):
                raise ValueError(f"stop_tokens must be a list of non-empty strings, got {self.stop_tokens!r}")
            self.stop_tokens = list(self.stop_tokens)
        for name, allowed in (
            ("embed_fallback", EMBED_FALLBACKS),
            ("prompt_embed", PROMPT_EMBEDS),
            ("positions", POSITIONS),
            ("generation", GENERATION_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if (self.prompt_embed == "token") != bool(self.prompt_embed_token):
            raise ValueError(
                "prompt_embed='token' needs prompt_embed_token (and only it does), got "
                f"prompt_embed={self.prompt_embed!r}, prompt_embed_token={self.prompt_embed_token!r}"
            )
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        if isinstance(self.prompts, dict):
            self.prompts = PromptConfig.from_dict(self.prompts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TTEConfig:
        return build(cls, data)

    def save(self, directory: str) -> str:
        path = os.path.join(directory, TTE_CONFIG_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path_or_id: str) -> TTEConfig | None:
        """The saved config of a checkpoint folder or hub id, or None when it has none."""
        if os.path.isdir(path_or_id):
            path = os.path.join(path_or_id, TTE_CONFIG_FILE)
        else:
            from transformers.utils import cached_file

            try:
                path = cached_file(path_or_id, TTE_CONFIG_FILE, _raise_exceptions_for_missing_entries=False)
            except OSError:
                path = None
        if not path or not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def resolve_embed_token(self, tokenizer) -> tuple[str, int]:
        """(token, id) of the embedding token for ``tokenizer``; a clear error when it has none."""
        candidates = [self.embed_token] if self.embed_token else [EMB_TOKEN, self.fallback_embed_token]
        vocab = tokenizer.get_vocab()
        for token in candidates:
            if token in vocab:
                return token, vocab[token]
        raise ValueError(f"the tokenizer has none of the embedding tokens {candidates}; set embed_token")

    def resolve_prompt_embed_token(self, tokenizer) -> int | None:
        """The id of ``prompt_embed_token`` (None unless ``prompt_embed="token"``); a clear error when
        the tokenizer lacks it."""
        if self.prompt_embed != "token":
            return None
        return token_id(tokenizer, self.prompt_embed_token, "prompt_embed_token")

    def resolve_stop_tokens(self, tokenizer) -> tuple[int, ...] | None:
        """The ids of ``stop_tokens`` (None: the checkpoint's EOS tokens stand)."""
        if self.stop_tokens is None:
            return None
        return tuple(token_id(tokenizer, t, "stop_tokens") for t in self.stop_tokens)


def token_id(tokenizer, token: str, setting: str) -> int:
    """The id of a whole vocabulary token (a vocab lookup: ``convert_tokens_to_ids`` maps a missing
    token to ``<unk>``)."""
    found = tokenizer.get_vocab().get(token)
    if found is None:
        raise ValueError(f"{setting}: the tokenizer has no token {token!r}")
    return found
