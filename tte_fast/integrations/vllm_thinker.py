"""A reasoner that thinks on vLLM, for a ``TwoModelTTE`` whose teacher one GPU does not hold while
our runtime embeds::

    from tte_fast import TwoModelTTE, UnifiedTTE
    from tte_fast.integrations.vllm_thinker import VllmThinker

    reasoner = VllmThinker.from_checkpoint("Qwen/Qwen2.5-VL-72B-Instruct", dtype="bfloat16",
                                           engine_args={"tensor_parallel_size": 4})
    model = TwoModelTTE(reasoner, UnifiedTTE.from_pretrained("path/to/embedder"))
    result = model.encode(queries, max_think_tokens=256)

``VllmThinker`` is the checkpoint's ``UnifiedTTE`` without weights (:mod:`tte_fast.traces.weightless`)
whose ``think`` runs on vLLM (:class:`~tte_fast.integrations.vllm_reasoner.VllmReasoner`): the same
prompts, stop rule and decoded traces as ``UnifiedTTE.think`` (greedy: token for token), so the
embedder reads what it was trained on. It only thinks: it holds no weights to embed with.
"""

from __future__ import annotations

from tte_fast.inputs import InputError, as_input_list
from tte_fast.integrations.vllm_reasoner import VllmReasoner
from tte_fast.model import ON_ERROR, UnifiedTTE
from tte_fast.prompting.prompts import check_side
from tte_fast.settings.params import EncodeParams
from tte_fast.traces.sources import TraceInput
from tte_fast.traces.weightless import weightless_model


class VllmThinker(UnifiedTTE):
    """``think`` on vLLM; build it with :meth:`from_checkpoint`."""

    vllm: VllmReasoner

    @classmethod
    def from_checkpoint(
        cls, path: str, *, dtype=None, recipe=None, engine_args=None, llm=None
    ) -> VllmThinker:
        """The thinker of checkpoint ``path``: ``engine_args`` go to ``vllm.LLM`` (``python``: run it
        with that interpreter); ``llm`` is an already built ``LLM`` to use instead."""
        thinker = weightless_model(path, recipe, cls=cls, dtype=dtype)
        thinker.vllm = VllmReasoner(
            path,
            EncodeParams(),
            dtype=dtype,
            recipe=recipe,
            engine_args=engine_args,
            llm=llm,
            prompt_model=thinker,
        )
        return thinker

    def think(
        self,
        inputs,
        max_think_tokens: int | None = None,
        batch_size: int = 8,
        side: str = "query",
        progress: bool | None = None,
        on_error: str = "raise",
        return_errors: bool = False,
        scheduler: str = "continuous",
        **generation,
    ):
        """As ``UnifiedTTE.think``; ``batch_size``, ``progress`` and ``scheduler`` are vLLM's to
        decide (it batches every input of the call)."""
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        check_side(side)
        options = self.decode_options(max_think_tokens=max_think_tokens, **generation)
        items = [TraceInput(str(i), side, raw, f"input {i}") for i, raw in enumerate(as_input_list(inputs))]
        generations = self.vllm.generate(items, options)
        failed = {i: g.error for i, g in enumerate(generations) if g.error is not None}
        if failed and on_error == "raise":
            first = min(failed)
            raise InputError(first, failed[first])
        traces = [g.trace for g in generations]
        errors = {i: f"input {i}: {message}" for i, message in failed.items()}
        return (traces, errors) if return_errors else traces

    def encode(self, *args, **kwargs):
        raise TypeError(
            "a VllmThinker only thinks (its weights live in vLLM): use it as a TwoModelTTE's reasoner"
        )
