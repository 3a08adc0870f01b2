"""The bridge from async handlers to the continuous-batching engine.

One :class:`~tte_fast.runtime.engine.Engine` serves every client: each input of a request is submitted on
its own and all clients' inputs share the slots. A two-model pipeline (``TwoModelTTE``) has two: its
reasoner's thinker (:mod:`tte_fast.serve.thinkers`) writes each input's trace, and as soon as one
is written the embedder's engine embeds input + trace in its admission prefill.

A request is admitted only if the inputs in flight stay within ``max_queue`` (429 otherwise); when
it fails, times out or its client leaves, the futures of its other inputs are cancelled, which frees
their slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import threading

from tte_fast.inputs import EmbedInput, InputError
from tte_fast.runtime.engine import Engine, EngineResult
from tte_fast.serve.config import ServeConfig
from tte_fast.serve.errors import APIError
from tte_fast.serve.thinkers import EngineThinker, VllmBatcher
from tte_fast.settings.params import EncodeParams
from tte_fast.two_model import TwoModelTTE


class EmbeddingService:
    """``model``: a ``UnifiedTTE`` (thinks and embeds on one engine) or a ``TwoModelTTE``."""

    def __init__(self, model, config: ServeConfig):
        two_model = isinstance(model, TwoModelTTE)
        self.reasoner, self.embedder = (model.reasoner, model.embedder) if two_model else (model, model)
        if self.embedder.head is not None:
            raise ValueError(
                "this checkpoint has a TTE_u head, which embeds in static batches and cannot think and "
                "embed through the serving engine; serve a last-token checkpoint"
            )
        self.config = config
        self.engine = Engine(self.embedder, slots=config.slots)
        self.thinker, self.embed_options = None, self.embedder.decode_options()
        if two_model:
            vllm = hasattr(self.reasoner, "vllm")  # a VllmThinker: its weights live in vLLM
            self.thinker = VllmBatcher(self.reasoner) if vllm else EngineThinker(self.reasoner, config.slots)
        self.in_flight = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.engine.start()
        if self.thinker is not None:
            self.thinker.start()

    def close(self) -> None:
        self.engine.close()
        if self.thinker is not None:
            self.thinker.close()

    def waiting(self) -> int:
        """Inputs queued for a slot (or for the reasoner's next vLLM call)."""
        thinking = self.thinker.waiting() if self.thinker is not None else 0
        return len(self.engine.waiting) + thinking

    def running(self) -> int:
        thinking = self.thinker.running() if self.thinker is not None else 0
        return sum(slot is not None for slot in self.engine.slots) + thinking

    def decode_options(self, params: EncodeParams):
        """The request's decode options: its think budget (capped here), else the checkpoint's."""
        limit, max_think_tokens = self.config.max_think_tokens, params.max_think_tokens
        if max_think_tokens is None:
            max_think_tokens = min(self.reasoner.config.max_think_tokens, limit)
        elif max_think_tokens > limit:
            raise APIError(
                400,
                f"max_think_tokens={max_think_tokens} is over this server's limit of {limit}",
                param="max_think_tokens",
                code="think_budget_too_large",
            )
        return self.reasoner.decode_options(
            **{**params.decode_kwargs(), "max_think_tokens": max_think_tokens}
        )

    def thinks(self, params: EncodeParams) -> bool:
        return self.reasoner.config.prompts.thinks(params.side) if params.think is None else params.think

    async def embed(
        self, items: list[EmbedInput], params: list[str], *, think: bool, side: str, options
    ) -> list[EngineResult]:
        """Every input's result in order; an input's error raises a 400 naming it (``params[i]``)."""
        self._reserve(len(items))
        futures, waits = [], []
        try:
            if think and self.thinker is not None:
                waits = [
                    asyncio.ensure_future(self._think_then_embed(item, options, side, i, futures))
                    for i, item in enumerate(items)
                ]
            else:
                for i, item in enumerate(items):
                    futures.append(self.engine.submit(item, options, think=think, side=side, index=i))
                waits = [asyncio.wrap_future(f) for f in futures]
            return await asyncio.wait_for(asyncio.gather(*waits), self.config.request_timeout_s)
        except InputError as error:
            param = params[error.index] if 0 <= error.index < len(params) else None
            message = str(error).split(": ", 1)[-1]
            raise APIError(400, f"{param}: {message}", param=param, code="invalid_input") from error
        except (asyncio.TimeoutError, TimeoutError) as error:
            raise APIError(
                504, f"the request did not finish within {self.config.request_timeout_s:g} s", code="timeout"
            ) from error
        except APIError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the engine failed this step; it keeps serving the next ones
            message = f"the model failed on this request: {type(error).__name__}: {error}"
            raise APIError(500, message) from error
        finally:
            for future in (*waits, *futures):
                future.cancel()  # no-op on finished ones; frees the slots of the others
            self._release(len(items))

    async def _think_then_embed(self, item, options, side: str, index: int, futures: list) -> EngineResult:
        """The reasoner's trace, then the embedder's embedding of input + trace (two-model pipelines).
        Usage counts what both models read and what the reasoner wrote."""
        futures.append(self.thinker.submit(item, options, side, index))
        thought = await asyncio.wrap_future(futures[-1])
        futures.append(
            self.engine.submit(
                item, self.embed_options, think=False, side=side, trace=thought.trace, index=index
            )
        )
        embedded = await asyncio.wrap_future(futures[-1])
        prompt_tokens = thought.prompt_tokens + embedded.prompt_tokens
        return EngineResult(
            embedded.embedding,
            thought.trace,
            embedded.sequence,
            prompt_tokens,
            thought.generated_tokens,
            thought.stop_reason,
        )

    def _reserve(self, n: int) -> None:
        with self._lock:
            if self.in_flight + n > self.config.max_queue:
                raise APIError(
                    429,
                    f"the server is busy ({self.in_flight} inputs in flight, limit {self.config.max_queue}); "
                    "retry later",
                    code="queue_full",
                )
            self.in_flight += n

    def _release(self, n: int) -> None:
        with self._lock:
            self.in_flight -= n
