"""The reasoner of a served two-model pipeline (TTE_t / TTE_s): traces for the embedder to read.

Our own reasoner thinks on a continuous-batching engine of its own (think-only requests). A
reasoner on vLLM (``VllmThinker``) gets :class:`VllmBatcher`: one thread owns the ``LLM`` (it is not
made for concurrent calls) and hands it every input waiting when it is free, so requests of many
clients share vLLM's batches. Both return one future per input with an ``EngineResult``
(``embedding`` None) or the input's ``InputError``.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import fields
from typing import NamedTuple

import torch

from tte_fast.inputs import EmbedInput, InputError
from tte_fast.runtime.background import BackgroundSteps
from tte_fast.runtime.engine import Engine, EngineResult, settle
from tte_fast.traces.sources import TraceInput


class EngineThinker:
    """A ``UnifiedTTE`` reasoner on an engine of its own."""

    def __init__(self, reasoner, slots: int):
        self.engine = Engine(reasoner, slots=slots)

    def submit(self, item: EmbedInput, options, side: str, index: int) -> Future:
        return self.engine.submit(item, options, think=True, side=side, embed=False, index=index)

    def waiting(self) -> int:
        return len(self.engine.waiting)

    def running(self) -> int:
        return sum(slot is not None for slot in self.engine.slots)

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        self.engine.close()


class _Waiting(NamedTuple):
    item: EmbedInput
    options: object  # DecodeOptions
    side: str
    index: int
    future: Future


class VllmBatcher(BackgroundSteps):
    """A ``VllmThinker``'s ``generate`` run by one thread over the inputs waiting, grouped by side
    and decode options (one vLLM call per group)."""

    thread_name = "tte-fast-vllm-thinker"

    def __init__(self, thinker):
        super().__init__()
        self.thinker = thinker
        self.waiting_inputs: deque[_Waiting] = deque()
        self._lock = threading.Lock()
        self._running = 0  # inputs in the vLLM call under way

    def waiting(self) -> int:
        return len(self.waiting_inputs)

    def running(self) -> int:
        return self._running

    def submit(self, item: EmbedInput, options, side: str, index: int) -> Future:
        future: Future = Future()
        with self._lock:
            self.waiting_inputs.append(_Waiting(item, options, side, index, future))
        self._work.set()
        return future

    @property
    def busy(self) -> bool:
        return bool(self.waiting_inputs)

    def step(self) -> None:
        """One vLLM call per side and decode options over every input waiting now."""
        with self._lock:
            taken = [w for w in self.waiting_inputs if not w.future.cancelled()]
            self.waiting_inputs.clear()
        while taken:
            key = (taken[0].side, taken[0].options)
            group = [w for w in taken if (w.side, w.options) == key]
            taken = [w for w in taken if (w.side, w.options) != key]
            self._think(group, *key)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            failed = list(self.waiting_inputs)
            self.waiting_inputs.clear()
        for w in failed:
            settle(w.future, error=error)

    def _think(self, group: list[_Waiting], side: str, options) -> None:
        self._running = len(group)
        try:
            inputs = [TraceInput(str(w.index), side, _raw(w.item), f"input {w.index}") for w in group]
            generations = self.thinker.vllm.generate(inputs, options)
        except Exception as error:  # this call failed: its requests fail, later ones still run
            for w in group:
                settle(w.future, error=error)
            return
        finally:
            self._running = 0
        for w, g in zip(group, generations):
            if g.error is not None:
                settle(w.future, error=InputError(w.index, g.error))
            else:
                empty = torch.empty(0, dtype=torch.long)
                result = EngineResult(
                    None, g.trace, empty, g.prompt_tokens, g.generated_tokens, g.stop_reason
                )
                settle(w.future, result)


def _raw(item: EmbedInput) -> dict:
    """The raw input dict of a checked input (its image already decoded)."""
    return {f.name: getattr(item, f.name) for f in fields(item) if getattr(item, f.name) is not None}
