"""TwoModelTTE: the paper's TTE_t / TTE_s pipelines, a reasoner and a separate embedder.

The reasoner (a large frozen teacher for TTE_t, a small SFT'd student for TTE_s) writes a trace per
input; the embedder reads input + trace in one prefill and embeds at its embedding token. Both are
:class:`~tte_fast.model.UnifiedTTE` instances, so prompts, batching, input checks and the result type
are the unified model's; only the trace crosses from one model to the other, as text (the two may
use different tokenizers).
"""

from __future__ import annotations

import os

import torch

from tte_fast.inputs import as_input_list
from tte_fast.model import EncodeResult, UnifiedTTE

REASONER_DIR = "reasoner"
EMBEDDER_DIR = "embedder"


class TwoModelTTE:
    """``reasoner.think`` then ``embedder.encode(..., traces=...)`` behind UnifiedTTE's ``encode`` API."""

    def __init__(self, reasoner: UnifiedTTE, embedder: UnifiedTTE):
        for name, model in (("reasoner", reasoner), ("embedder", embedder)):
            if not isinstance(model, UnifiedTTE):
                raise TypeError(f"{name} must be a UnifiedTTE, got {type(model).__name__}")
        self.reasoner = reasoner
        self.embedder = embedder

    @classmethod
    def from_pretrained(
        cls,
        reasoner_path: str,
        embedder_path: str | None = None,
        reasoner_opts: dict | None = None,
        embedder_opts: dict | None = None,
        **opts,
    ) -> TwoModelTTE:
        """Load both models with ``UnifiedTTE.from_pretrained``; ``opts`` (dtype, device, ...) go to
        both, ``reasoner_opts`` / ``embedder_opts`` to one. Without ``embedder_path``,
        ``reasoner_path`` is a folder written by :meth:`save_pretrained`."""
        if embedder_path is None:
            reasoner_path, embedder_path = (
                os.path.join(reasoner_path, d) for d in (REASONER_DIR, EMBEDDER_DIR)
            )
        reasoner = UnifiedTTE.from_pretrained(reasoner_path, **{**opts, **(reasoner_opts or {})})
        embedder = UnifiedTTE.from_pretrained(embedder_path, **{**opts, **(embedder_opts or {})})
        return cls(reasoner, embedder)

    def save_pretrained(self, directory: str) -> None:
        """Both models, in ``reasoner/`` and ``embedder/`` under ``directory``."""
        self.reasoner.save_pretrained(os.path.join(directory, REASONER_DIR))
        self.embedder.save_pretrained(os.path.join(directory, EMBEDDER_DIR))

    def think(
        self, inputs, max_think_tokens: int | None = None, batch_size: int = 8, **kwargs
    ) -> list[str | None]:
        """The reasoner's traces, in input order (see ``UnifiedTTE.think``)."""
        return self.reasoner.think(inputs, max_think_tokens=max_think_tokens, batch_size=batch_size, **kwargs)

    def encode(
        self,
        inputs,
        think: bool | None = None,
        max_think_tokens: int | None = None,
        batch_size: int = 8,
        traces: list[str] | None = None,
        side: str = "query",
        progress: bool | None = None,
        on_error: str = "raise",
        **generation,
    ) -> EncodeResult:
        """Embed ``inputs``: the reasoner thinks (unless ``think=False`` or ``traces`` are given), then
        the embedder encodes each input with its trace in one prefill.

        ``think=None`` follows the reasoner's setting for ``side``; ``generation`` takes the decode
        options of ``UnifiedTTE.encode`` (``max_answer_tokens``, ``do_sample``, ``temperature``, ...)."""
        self.reasoner.decode_options(max_think_tokens=max_think_tokens, **generation)  # checked up front
        if traces is not None and think:
            raise ValueError("pass either think=True or traces, not both")
        common = {"batch_size": batch_size, "side": side, "progress": progress, "on_error": on_error}
        thinking = traces is None and (
            self.reasoner.config.prompts.thinks(side) if think is None else bool(think)
        )
        if not thinking:
            return self.embedder.encode(inputs, think=False, traces=traces, **common)

        items = as_input_list(inputs)
        traces, errors = self.reasoner.think(
            items, max_think_tokens, return_errors=True, **common, **generation
        )
        if not errors:
            return self.embedder.encode(items, think=False, traces=traces, **common)
        # on_error="skip" and the reasoner dropped some inputs: embed the rest, keep input order.
        ok = [i for i in range(len(items)) if i not in errors]
        part = self.embedder.encode(
            [items[i] for i in ok], think=False, traces=[traces[i] for i in ok], **common
        )
        return _scatter(part, ok, len(items), errors)


def _scatter(part: EncodeResult, indices: list[int], n: int, errors: dict[int, str]) -> EncodeResult:
    """``part`` (results for ``indices``) spread back over ``n`` inputs; missing rows are zeros."""
    embeddings = torch.zeros(n, part.embeddings.shape[-1], dtype=part.embeddings.dtype)
    traces: list[str | None] = [None] * n
    sequences: list[torch.Tensor | None] = [None] * n
    errors = dict(errors)
    for j, i in enumerate(indices):
        if j in part.errors:
            errors[i] = part.errors[j].replace(f"input {j}:", f"input {i}:", 1)
            continue
        embeddings[i] = part.embeddings[j]
        traces[i] = part.traces[j] if part.traces is not None else None
        sequences[i] = part.sequences[j]
    return EncodeResult(embeddings, traces, sequences, dict(sorted(errors.items())))
