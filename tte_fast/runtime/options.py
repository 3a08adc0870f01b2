"""How a decode picks tokens and when its rows stop (the rule itself is ``tte_fast.runtime.stop``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tte_fast.settings.checks import non_negative_int, positive_int

if TYPE_CHECKING:
    from tte_fast.runtime.stop_strings import StopStrings


# Where a row that stops without sampling its embedding token is embedded (tte_fast.runtime.stop).
EMBED_FALLBACKS = ("force", "last_sampled", "last_fed")


@dataclass(frozen=True)
class DecodeOptions:
    """When rows stop and how tokens are picked.

    A row stops when it samples one of ``eos_token_ids`` (the stop token is not kept), when its
    generated text completes one of ``stop_strings.strings`` (kept), when it has sampled
    ``max_think_tokens`` tokens without closing the think section, or when it has sampled
    ``max_answer_tokens`` tokens after closing it. The think section closes at ``think_end_token_id``
    (a one-token ``</think>``) or where the text completes ``stop_strings.think_end`` (several tokens).

    ``repetition_penalty`` is HF's: the logits of every token id a row has seen (prompt and sampled)
    are penalised before greedy or sampled picking; 1.0 is off.

    ``embed_fallback`` is where a row that embeds reads its embedding when it stops without sampling
    its embedding token: ``"force"`` feeds the embedding token, ``"last_sampled"`` feeds its last
    sampled token and reads there (RGE's rule), ``"last_fed"`` reads the state at the last token it
    fed, with no further step (UME-R1's rule).
    """

    max_think_tokens: int = 256
    max_answer_tokens: int = 32
    eos_token_ids: tuple[int, ...] = ()
    think_end_token_id: int | None = None
    pad_token_id: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop_strings: StopStrings | None = None  # built once per tokenizer (``StopStrings.of``)
    embed_fallback: str = "force"

    def __post_init__(self):
        positive_int("max_think_tokens", self.max_think_tokens)
        non_negative_int("max_answer_tokens", self.max_answer_tokens)
        non_negative_int("top_k", self.top_k)  # 0: off
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        check_repetition_penalty(self.repetition_penalty)
        if self.embed_fallback not in EMBED_FALLBACKS:
            raise ValueError(f"embed_fallback must be one of {EMBED_FALLBACKS}, got {self.embed_fallback!r}")

    @property
    def closes_think(self) -> bool:
        """Whether rows can close the think section (and then run the answer budget)."""
        text_end = self.stop_strings is not None and self.stop_strings.think_end is not None
        return self.think_end_token_id is not None or text_end

    @property
    def max_new_tokens(self) -> int:
        return self.max_think_tokens + (self.max_answer_tokens if self.closes_think else 0)


def check_repetition_penalty(value) -> None:
    """A finite number > 0 (not a bool): HF divides positive logits by it."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"repetition_penalty must be a number > 0, got {value!r}")
