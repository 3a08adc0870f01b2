"""The ``/v1/embeddings`` answer in vLLM's shape, with ``dimensions`` applied and ``trace`` added."""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np

from tte_fast.runtime.engine import EngineResult
from tte_fast.serve.errors import APIError


def check_dimensions(dimensions: int | None, full: int, matryoshka: bool) -> None:
    if dimensions is None or dimensions == full:
        return
    if dimensions > full:
        raise APIError(
            400,
            f"dimensions={dimensions} is over the model's {full}",
            param="dimensions",
            code="bad_dimensions",
        )
    if not matryoshka:
        raise APIError(
            400,
            f"this model gives {full}-dimensional embeddings and was not trained for truncated ones "
            "(the server was not started with --matryoshka); leave 'dimensions' out or set it to "
            f"{full}",
            param="dimensions",
            code="dimensions_not_supported",
        )


def vectors(results: list[EngineResult], dimensions: int | None) -> np.ndarray:
    """float32 [N, D] unit-norm rows; truncated to ``dimensions`` and renormalised when asked."""
    out = np.stack([r.embedding.numpy() for r in results]).astype(np.float32, copy=False)
    if dimensions is not None and dimensions < out.shape[1]:
        out = out[:, :dimensions]
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32, copy=False)


def embeddings_body(
    results: list[EngineResult],
    model_name: str,
    *,
    encoding_format: str,
    dimensions: int | None,
    return_traces: bool,
) -> dict:
    rows = vectors(results, dimensions)
    data = []
    for i, (result, row) in enumerate(zip(results, rows)):
        if encoding_format == "base64":
            embedding = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = row.tolist()
        item = {"index": i, "object": "embedding", "embedding": embedding}
        if return_traces:
            item["trace"] = result.trace
        data.append(item)
    prompt = sum(r.prompt_tokens for r in results)
    generated = sum(r.generated_tokens for r in results)
    return {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model_name,
        "data": data,
        # total counts the tokens generated while thinking as well (OpenAI's shape has no field for them)
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": prompt + generated,
            "completion_tokens": generated,
        },
    }
