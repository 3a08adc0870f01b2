"""EncodeParams: the settings of an encode call, described and checked in one place.

Eval, the corpus job, the server and the Ray and mteb adapters take these settings from a config
file, flags or a request; building an :class:`EncodeParams` checks them the same way for all of them,
before any model loads, and hands ``UnifiedTTE.encode`` / ``TwoModelTTE.encode`` their keywords.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tte_fast.prompting.prompts import check_side
from tte_fast.runtime.options import check_repetition_penalty
from tte_fast.settings.checks import non_negative_int, positive_int
from tte_fast.settings.schema import ConfigError, build

# encode's keywords besides the think budget that end up in DecodeOptions.
GENERATION = ("max_answer_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "repetition_penalty")


@dataclass(frozen=True)
class EncodeParams:
    """Budgets (None: the checkpoint's), sampling and repetition penalty, seed, side, thinking
    (None: the side's setting), ``batch_size`` (continuous-batching slots) and ``prefill_attention``
    (a load-time option of ``from_pretrained``, checked there)."""

    side: str = "query"
    think: bool | None = None
    max_think_tokens: int | None = None
    max_answer_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    batch_size: int = 8
    prefill_attention: str = "auto"

    def __post_init__(self):
        check_side(self.side)
        for name in ("think", "do_sample"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "think" and value is None):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if self.max_think_tokens is not None:
            positive_int("max_think_tokens", self.max_think_tokens)
        if self.max_answer_tokens is not None:
            non_negative_int("max_answer_tokens", self.max_answer_tokens)
        if not _number(self.temperature) or (self.do_sample and not self.temperature > 0):
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        non_negative_int("top_k", self.top_k)
        if not (_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        check_repetition_penalty(self.repetition_penalty)
        positive_int("batch_size", self.batch_size)

    @classmethod
    def from_mapping(cls, raw, path: str = "") -> EncodeParams:
        """From a config section (``path`` names it in errors, e.g. ``"encode."``)."""
        try:
            return build(cls, raw, path)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{path}{err}") from None

    def generation(self) -> dict:
        """The decode options besides the think budget (``encode``'s / ``think``'s ``**generation``)."""
        return {name: getattr(self, name) for name in GENERATION}

    def encode_kwargs(self) -> dict:
        """The keywords of ``UnifiedTTE.encode`` / ``TwoModelTTE.encode`` these settings give."""
        return {
            "side": self.side,
            "think": self.think,
            "max_think_tokens": self.max_think_tokens,
            "batch_size": self.batch_size,
            **self.generation(),
        }

    def load_kwargs(self) -> dict:
        """The keywords of ``from_pretrained`` these settings give."""
        return {"prefill_attention": self.prefill_attention}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
