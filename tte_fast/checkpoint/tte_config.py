"""The runtime's own settings, saved as ``tte_config.json`` next to the weights."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from tte_fast.prompting.prompts import PromptConfig
from tte_fast.settings.checks import positive_int
from tte_fast.settings.schema import ConfigError, build

TTE_CONFIG_FILE = "tte_config.json"
HEADS = ("last_token", "tte_u")
# The checkpoint's own embedding token wins when the tokenizer has it.
EMB_TOKEN = "<emb>"


@dataclass
class TTEConfig:
    """Head type and its parameters, prompts, embedding token and generation budgets.

    ``embed_token=None`` means: ``<emb>`` if the tokenizer has it, else ``fallback_embed_token``
    (the chat template's end-of-turn token, Qwen's EOS).
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

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {HEADS}")
        positive_int("head_layers", self.head_layers)
        if isinstance(self.stop_strings, str) or not all(isinstance(t, str) and t for t in self.stop_strings):
            raise ValueError(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")
        self.stop_strings = list(self.stop_strings)
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
