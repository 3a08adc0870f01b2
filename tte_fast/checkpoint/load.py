"""Loading a TTE model from what a user writes: one function for the CLIs, configs and adapters.

A spec is a checkpoint folder or hub id (a ``UnifiedTTE``), a folder holding ``reasoner/`` and
``embedder/`` (a ``TwoModelTTE``, as ``TwoModelTTE.save_pretrained`` writes it), or ``tiny:MODEL_TYPE``:
a built-in tiny model with RANDOM weights, to try a pipeline without a checkpoint.
"""

from __future__ import annotations

import os
import tempfile

TINY_PREFIX = "tiny:"
# A reasoner that thinks on vLLM (tte_fast.integrations.vllm_thinker): ``vllm:PATH``; vllm.LLM's
# arguments as JSON in this environment variable (``{"tensor_parallel_size": 4}``).
VLLM_PREFIX = "vllm:"
VLLM_ARGS_ENV = "TTE_FAST_VLLM_ARGS"


def load_tte(spec: str, reasoner: str | None = None, scratch_dir: str | None = None, **kwargs):
    """A UnifiedTTE from ``spec``, or a TwoModelTTE when ``reasoner`` is given (``spec`` is then the
    embedder) or ``spec`` holds ``reasoner/`` and ``embedder/``. ``tiny:`` models are built once
    under ``scratch_dir`` (default: the temporary folder); ``kwargs`` (device, dtype,
    prefill_attention, ...) go to ``from_pretrained``."""
    from tte_fast import TwoModelTTE, UnifiedTTE

    folder = tiny_models_folder(scratch_dir)
    for name in (spec, reasoner):
        if name is not None and str(name).startswith(TINY_PREFIX):
            print(f"NOTE: {name} is a tiny model with RANDOM, UNTRAINED weights: expect chance-level scores.")
    spec = resolve_tiny(str(spec), folder)
    if reasoner is not None and str(reasoner).startswith(VLLM_PREFIX):
        return TwoModelTTE(vllm_thinker(str(reasoner), kwargs), UnifiedTTE.from_pretrained(spec, **kwargs))
    if reasoner is not None:
        return TwoModelTTE.from_pretrained(resolve_tiny(str(reasoner), folder), spec, **kwargs)
    if all(os.path.isdir(os.path.join(spec, d)) for d in ("reasoner", "embedder")):
        return TwoModelTTE.from_pretrained(spec, **kwargs)
    return UnifiedTTE.from_pretrained(spec, **kwargs)


def vllm_thinker(spec: str, kwargs: dict):
    """The ``VllmThinker`` of ``vllm:PATH`` (dtype and recipe from ``kwargs``, vLLM's arguments from
    ``TTE_FAST_VLLM_ARGS``)."""
    import json

    from tte_fast.integrations.vllm_thinker import VllmThinker

    raw = os.environ.get(VLLM_ARGS_ENV, "{}")
    try:
        engine_args = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{VLLM_ARGS_ENV} must be a JSON object of vllm.LLM arguments, got {raw!r} ({err})"
        ) from None
    if not isinstance(engine_args, dict):
        raise ValueError(f"{VLLM_ARGS_ENV} must be a JSON object of vllm.LLM arguments, got {raw!r}")
    dtype = kwargs.get("dtype")
    return VllmThinker.from_checkpoint(
        spec[len(VLLM_PREFIX) :],
        dtype=None if dtype is None else str(dtype).replace("torch.", ""),
        recipe=kwargs.get("recipe"),
        engine_args=engine_args,
    )


def tiny_models_folder(scratch_dir: str | None = None) -> str:
    """Where ``tiny:`` models are built (under ``scratch_dir``, default the temporary folder)."""
    # Not "tte_fast": a folder of that name in the temporary folder would be importable from there.
    return os.path.join(scratch_dir or os.path.join(tempfile.gettempdir(), "tte-fast"), "tiny_models")


def resolve_tiny(spec: str, folder: str) -> str:
    """``spec`` itself, or for ``tiny:MODEL_TYPE`` the checkpoint folder ``folder/MODEL_TYPE``,
    built there (seed 0) unless it already is."""
    if not spec.startswith(TINY_PREFIX):
        return spec
    from tte_fast.testing import build_tiny_checkpoint

    model_type = spec[len(TINY_PREFIX) :]
    path = os.path.join(folder, model_type)
    if not os.path.isfile(os.path.join(path, "config.json")):
        build_tiny_checkpoint(model_type, path, seed=0)
    return path
