"""The bridge from async handlers to the continuous-batching engine.

One :class:`~tte_fast.runtime.engine.Engine` serves every client: each input of a request is submitted on
its own and all clients' inputs share the slots. A request is admitted only if the inputs in flight
stay within ``max_queue`` (429 otherwise); when it fails, times out or its client leaves, the
futures of its other inputs are cancelled, which frees their slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import threading

from tte_fast.inputs import EmbedInput, InputError
from tte_fast.runtime.engine import Engine, EngineResult
from tte_fast.serve.config import ServeConfig
from tte_fast.serve.errors import APIError
from tte_fast.settings.params import EncodeParams


class EmbeddingService:
    def __init__(self, model, config: ServeConfig):
        if model.head is not None:
            raise ValueError(
                "this checkpoint has a TTE_u head, which embeds in static batches and cannot think and "
                "embed through the serving engine; serve a last-token checkpoint"
            )
        self.model, self.config = model, config
        self.engine = Engine(model, slots=config.slots)
        self.in_flight = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        self.engine.close()

    def waiting(self) -> int:
        return len(self.engine.waiting)

    def running(self) -> int:
        return sum(slot is not None for slot in self.engine.slots)

    def decode_options(self, params: EncodeParams):
        """The request's decode options: its think budget (capped here), else the checkpoint's."""
        limit, max_think_tokens = self.config.max_think_tokens, params.max_think_tokens
        if max_think_tokens is None:
            max_think_tokens = min(self.model.config.max_think_tokens, limit)
        elif max_think_tokens > limit:
            raise APIError(
                400,
                f"max_think_tokens={max_think_tokens} is over this server's limit of {limit}",
                param="max_think_tokens",
                code="think_budget_too_large",
            )
        return self.model.decode_options(**{**params.decode_kwargs(), "max_think_tokens": max_think_tokens})

    def thinks(self, params: EncodeParams) -> bool:
        return self.model.config.prompts.thinks(params.side) if params.think is None else params.think

    async def embed(
        self, items: list[EmbedInput], params: list[str], *, think: bool, side: str, options
    ) -> list[EngineResult]:
        """Every input's result in order; an input's error raises a 400 naming it (``params[i]``)."""
        self._reserve(len(items))
        futures = []
        try:
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
            for future in futures:
                future.cancel()  # no-op on finished ones; frees the slots of the others
            self._release(len(items))

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
