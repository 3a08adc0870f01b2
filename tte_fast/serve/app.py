"""The FastAPI application: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` over one model and one continuous-batching engine (started and stopped with the
app's lifespan). Every route but ``/health`` needs the API key when the server has one."""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import threading
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from tte_fast.inputs import InputError, check_input
from tte_fast.serve.config import ServeConfig
from tte_fast.serve.errors import APIError
from tte_fast.serve.media import MediaLoader
from tte_fast.serve.metrics import Metrics, MetricsMiddleware
from tte_fast.serve.protocol import EmbeddingRequest, parse_json, parse_request
from tte_fast.serve.responses import check_dimensions, embeddings_body
from tte_fast.serve.service import EmbeddingService

JSON = "application/json"
CLIENT_CLOSED = 499  # logged only: nobody is left to read it


def create_app(model, config: ServeConfig | None = None) -> FastAPI:
    """The server of ``model``: a ``UnifiedTTE`` with the last-token head, or a ``TwoModelTTE``
    (its reasoner ours or on vLLM, its embedder last-token)."""
    config = config or ServeConfig()
    service = EmbeddingService(model, config)
    metrics = Metrics(service)
    media = MediaLoader(config)
    created = int(time.time())
    expected_key = (config.api_key or "").encode()
    reasoner, embedder = service.reasoner, service.embedder
    hidden_size = embedder.hf_model.config.get_text_config().hidden_size
    counter = _TokenCounter(embedder.tokenizer)
    contexts = [m.context_length for m in (reasoner, embedder) if m.context_length is not None]
    context_length = min(contexts, default=None)
    vision = reasoner.vision and embedder.vision

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="tte_fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.metrics, app.state.config = service, metrics, config

    async def api_error(request: Request, error: APIError) -> Response:
        metrics.error(error.code or error.type)
        return error.response()

    async def http_error(request: Request, error: HTTPException) -> Response:
        return await api_error(request, APIError(error.status_code, str(error.detail), code="not_found"))

    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return await api_error(request, APIError(422, str(error), code="invalid_type"))

    async def internal_error(request: Request, error: Exception) -> Response:
        return await api_error(request, APIError(500, f"internal error: {type(error).__name__}"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected_key):
            message = "missing or wrong API key (send 'Authorization: Bearer KEY')"
            raise APIError(401, message, code="invalid_api_key")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> Response:
        card = {"id": config.model_name, "object": "model", "created": created, "owned_by": "tte_fast"}
        return _json({"object": "list", "data": [card]})

    @app.post("/v1/embeddings", dependencies=[Depends(authorized)])
    async def embeddings(request: Request) -> Response:
        body = await _read_body(request, config.max_body_bytes)
        req = parse_request(await asyncio.to_thread(parse_json, body), config.max_inputs)
        if req.model is not None and req.model != config.model_name:
            message = f"the model {req.model!r} does not exist here (this server has {config.model_name!r})"
            raise APIError(404, message, param="model", code="model_not_found")
        check_dimensions(req.dimensions, hidden_size, config.matryoshka)
        think = service.thinks(req.params)
        options = service.decode_options(req.params)
        await asyncio.to_thread(_check_lengths, req, counter, context_length)
        items = await _load_items(req, media, vision)
        task = asyncio.ensure_future(
            service.embed(
                items, [it.param for it in req.items], think=think, side=req.params.side, options=options
            )
        )
        left = asyncio.ensure_future(_client_left(request))
        await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the client went away: free its slots, answer nobody
            task.cancel()
            metrics.error("client_disconnected")
            return Response(status_code=CLIENT_CLOSED)
        left.cancel()
        results = task.result()
        for r in results:
            metrics.embedded(think, r.prompt_tokens, r.generated_tokens)
        answer = embeddings_body(
            results,
            config.model_name,
            encoding_format=req.encoding_format,
            dimensions=req.dimensions,
            return_traces=req.return_traces,
        )
        return _json(answer)

    return app


def _json(data) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), media_type=JSON)


async def _read_body(request: Request, limit: int) -> bytes:
    message = f"the request body is over this server's limit of {limit} bytes"
    too_big = APIError(413, message, code="body_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


class _TokenCounter:
    """Token counts on a copy of the tokenizer: the engine's processor changes the padding state
    of its own tokenizer while it batches, and a fast tokenizer used from two threads at such a
    moment fails ("Already borrowed")."""

    def __init__(self, tokenizer):
        self.tokenizer = copy.deepcopy(tokenizer)
        self.lock = threading.Lock()

    def __call__(self, text: str) -> int:
        with self.lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_lengths(req: EmbeddingRequest, count: _TokenCounter, context: int | None) -> None:
    """Refuse texts longer than the model's context here, in a worker thread, so that a huge text
    is never tokenized in the engine loop that every client shares. Only long texts are counted:
    a character is at most a few tokens, so shorter ones are left to the engine's exact check."""
    if context is None:
        return
    for raw in req.items:
        text = (raw.text or "") + (raw.instruction or "")
        if len(text) <= context // 4:
            continue
        tokens = count(text)
        if tokens > context:
            message = f"{raw.param}: its text is {tokens} tokens, over the model's context of {context}"
            raise APIError(400, message, param=raw.param, code="context_length_exceeded")


async def _load_items(req: EmbeddingRequest, media: MediaLoader, vision: bool) -> list:
    """Checked inputs with their images fetched and decoded and their videos fetched (concurrently)."""
    for raw in req.items:
        if (raw.image is not None or raw.video is not None) and not vision:
            kind = "images" if raw.image is not None else "videos"
            raise APIError(400, f"{raw.param}: this model is text-only and takes no {kind}", param=raw.param)
    images = await asyncio.gather(
        *(media.load(i, raw.param, raw.image) for i, raw in enumerate(req.items) if raw.image is not None)
    )
    videos = await asyncio.gather(
        *(media.load_video(raw.param, raw.video) for raw in req.items if raw.video is not None)
    )
    images, videos = iter(images), iter(videos)
    items = []
    for i, raw in enumerate(req.items):
        fields = {"text": raw.text, "instruction": raw.instruction}
        if raw.image is not None:
            fields["image"] = next(images)
        if raw.video is not None:
            fields["video"] = next(videos)
        try:
            items.append(check_input(i, {k: v for k, v in fields.items() if v is not None}))
        except InputError as error:
            message = str(error).split(": ", 1)[-1]
            raise APIError(400, f"{raw.param}: {message}", param=raw.param, code="invalid_input") from error
    return items


async def _client_left(request: Request) -> None:
    """Returns when the client disconnects (the body is read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
