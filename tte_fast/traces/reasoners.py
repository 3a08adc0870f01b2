"""The reasoner backend a trace config names, loaded: our engine (``engine``), vLLM offline
(``vllm``) or Ray Data with vLLM (``ray``); the last two are optional extras."""

from __future__ import annotations

import os


def _device(device: str | None) -> str | None:
    """cuda:LOCAL_RANK under torchrun when no index is given, so processes do not share one GPU."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None or not torch.cuda.is_available() or device not in (None, "cuda"):
        return device
    return f"cuda:{local_rank}"


def load_reasoner(config):
    """The backend of ``config.reasoner`` with ``config``'s decode settings."""
    r, params = config.reasoner, config.decode_params()
    if r.backend == "engine":
        from tte_fast.checkpoint.load import load_tte
        from tte_fast.traces.engine_reasoner import EngineReasoner

        kwargs = {"device": _device(r.device), "dtype": r.dtype, **r.options}
        if r.recipe:
            kwargs["recipe"] = r.recipe
        return EngineReasoner(load_tte(r.path, **kwargs), params, r.path)
    from tte_fast.checkpoint.load import resolve_tiny, tiny_models_folder

    path = resolve_tiny(r.path, tiny_models_folder())  # tiny:MODEL_TYPE, built as load_tte builds it
    if r.backend == "vllm":
        from tte_fast.integrations.vllm_reasoner import VllmReasoner

        return VllmReasoner(path, params, dtype=r.dtype, recipe=r.recipe, engine_args=r.vllm)
    from tte_fast.integrations.ray_reasoner import RayReasoner

    return RayReasoner(path, params, dtype=r.dtype, recipe=r.recipe, engine_args=r.vllm, ray=r.ray)
