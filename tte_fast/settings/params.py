"""EncodeParams: the settings of an encode call, described and checked in one place.

Eval, the corpus job, the server and the Ray and mteb adapters take these settings from a config
file, flags or a request; building an :class:`EncodeParams` checks them the same way for all of them,
before any model loads, and hands ``UnifiedTTE.encode`` / ``TwoModelTTE.encode`` their keywords.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tte_fast.checkpoint.tte_config import GENERATION_SOURCES
from tte_fast.prompting.prompts import check_side
from tte_fast.runtime.options import check_repetition_penalty
from tte_fast.settings.checks import non_negative_int, positive_int
from tte_fast.settings.schema import ConfigError, build

# encode's keywords besides the think budget that end up in DecodeOptions (None: left to the model).
GENERATION = (
    "max_answer_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "repetition_penalty",
    "generation",
)


@dataclass(frozen=True)
class EncodeParams:
    """Budgets (None: the checkpoint's), sampling and repetition penalty (None: the model's source,
    ``generation``: greedy, or the checkpoint's generation_config as recipes set), seed, side,
    thinking (None: the side's setting), ``batch_size`` (continuous-batching slots), and the
    load-time options of ``from_pretrained``: ``prefill_attention`` (checked there) and ``recipe``."""

    side: str = "query"
    think: bool | None = None
    max_think_tokens: int | None = None
    max_answer_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    generation: str | None = None
    batch_size: int = 8
    prefill_attention: str = "auto"
    recipe: str | None = None

    def __post_init__(self):
        check_side(self.side)
        for name in ("think", "do_sample"):
            value = getattr(self, name)
            if not isinstance(value, bool) and value is not None:
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if self.max_think_tokens is not None:
            positive_int("max_think_tokens", self.max_think_tokens)
        if self.max_answer_tokens is not None:
            non_negative_int("max_answer_tokens", self.max_answer_tokens)
        if self.temperature is not None and (
            not _number(self.temperature) or (self.do_sample and not self.temperature > 0)
        ):
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if self.top_k is not None:
            non_negative_int("top_k", self.top_k)
        if self.top_p is not None and not (_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.repetition_penalty is not None:
            check_repetition_penalty(self.repetition_penalty)
        if self.generation is not None and self.generation not in GENERATION_SOURCES:
            raise ValueError(f"generation must be one of {GENERATION_SOURCES}, got {self.generation!r}")
        positive_int("batch_size", self.batch_size)
        if self.recipe is not None:
            from tte_fast.checkpoint.recipes import get_recipe

            get_recipe(self.recipe)  # an unknown name fails before any model loads

    @classmethod
    def from_mapping(cls, raw, path: str = "") -> EncodeParams:
        """From a config section (``path`` names it in errors, e.g. ``"encode."``)."""
        try:
            return build(cls, raw, path)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{path}{err}") from None

    def decode_kwargs(self) -> dict:
        """The decode options besides the think budget that are set (``encode``'s / ``think``'s
        ``**generation``); the model fills in the rest."""
        return {name: getattr(self, name) for name in GENERATION if getattr(self, name) is not None}

    def encode_kwargs(self) -> dict:
        """The keywords of ``UnifiedTTE.encode`` / ``TwoModelTTE.encode`` these settings give."""
        return {
            "side": self.side,
            "think": self.think,
            "max_think_tokens": self.max_think_tokens,
            "batch_size": self.batch_size,
            **self.decode_kwargs(),
        }

    def load_kwargs(self) -> dict:
        """The keywords of ``from_pretrained`` these settings give."""
        recipe = {"recipe": self.recipe} if self.recipe is not None else {}
        return {"prefill_attention": self.prefill_attention, **recipe}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
