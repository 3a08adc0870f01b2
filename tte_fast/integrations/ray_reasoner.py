"""Ray Data with vLLM as a trace job's reasoner, for teachers served by many machines:
``pip install 'tte_fast[ray-llm]'`` (Ray Data's LLM support and vLLM).

```yaml
reasoner:
  path: Qwen/Qwen2.5-VL-72B-Instruct
  backend: ray
  vllm: {tensor_parallel_size: 4, max_model_len: 8192}       # vLLMEngineProcessorConfig.engine_kwargs
  ray: {concurrency: 8, batch_size: 64, accelerator_type: H100}  # the rest of the processor config
shard_size: 50000                     # each shard is one Ray Data job: its engines load the model once
```

Each shard of the job is one Ray Dataset through a ``ray.data.llm`` processor
(``vLLMEngineProcessorConfig`` + ``build_processor``), whose ``concurrency`` engine replicas each hold
the model with ``tensor_parallel_size`` GPUs. The processor's chat-template, tokenize and detokenize
stages are off: the rows carry our prompt's token ids (``tokenized_prompt``), the image
(``multimodal_data``) and the sampling settings of :mod:`tte_fast.traces.external`, so traces are
what the vLLM backend and our engine write. Ray Data reports no stop reason: it is read off the last
token and the generated text's end.

On a Ray cluster without GPUs (vLLM's CPU build), each engine replica takes a bundle of one CPU
unless ``ray.placement_group_config`` says otherwise: Ray Data's default bundle asks for a GPU, and
such a job would wait for one forever.
"""

from __future__ import annotations

import copy

from tte_fast.integrations.vllm_reasoner import VllmReasoner
from tte_fast.traces.external import sampling_settings

# The processor's own prompt stages: our rows carry the prompt's token ids and the image already.
STAGES_OFF = ("chat_template", "tokenize", "detokenize", "prepare_multimodal")
CPU_BUNDLES = {"bundle_per_worker": {"CPU": 1}}
EXTRA = "pip install 'tte_fast[ray-llm]' (Ray Data's LLM support, ray[data,llm], and vLLM)"


def import_ray_llm():
    try:
        import ray.data
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as err:
        raise ImportError(f"the ray reasoner backend needs Ray Data's LLM support and vLLM: {EXTRA}") from err
    return ray.data, build_processor, vLLMEngineProcessorConfig


def _cluster_has_gpus() -> bool:
    import ray

    if not ray.is_initialized():
        ray.init()  # what Ray Data would do at the first dataset
    return ray.cluster_resources().get("GPU", 0) > 0


def stop_reason(options, phase: str, tokens: list[int], text: str):
    """What vLLM's ``stop_reason`` would be: the stop id or stop string that ended the text, or None."""
    settings = sampling_settings(options, phase)
    if tokens and tokens[-1] in settings["stop_token_ids"]:
        return tokens[-1]
    return next((s for s in settings["stop"] if text.endswith(s)), None)


class RayReasoner(VllmReasoner):
    """A ``ray.data.llm`` processor over checkpoint ``path``; ``engine_args`` are its
    ``engine_kwargs``, ``ray`` the other ``vLLMEngineProcessorConfig`` fields."""

    backend = "ray"

    def __init__(self, path: str, params, *, dtype=None, recipe=None, engine_args=None, ray=None):
        self.data, build_processor, config_class = import_ray_llm()
        engine_kwargs = {"dtype": dtype or "auto", **dict(engine_args or {})}
        super().__init__(path, params, recipe=recipe, engine_args=engine_kwargs)
        if self.model.vision:
            engine_kwargs.setdefault("limit_mm_per_prompt", {"image": 1})
        stages = {f"{s}_stage": False for s in STAGES_OFF}
        self.ray_settings = dict(ray or {})
        if "placement_group_config" not in self.ray_settings and not _cluster_has_gpus():
            self.ray_settings["placement_group_config"] = copy.deepcopy(CPU_BUNDLES)
        config = config_class(model_source=path, engine_kwargs=engine_kwargs, **stages, **self.ray_settings)
        self.processor = build_processor(config)

    def _build_llm(self, path: str, dtype) -> None:
        return None  # the processor's engine replicas hold the model

    def description(self) -> dict:
        return {**super().description(), "ray": self.ray_settings}

    def _generate(self, requests: list[dict], phase: str, options) -> list[tuple]:
        sampling = sampling_settings(options, phase)
        rows = []
        for i, r in enumerate(requests):
            row = {"row": i, "tokenized_prompt": r["prompt_token_ids"], "sampling_params": sampling}
            if "multi_modal_data" in r:
                row["multimodal_data"] = r["multi_modal_data"]
            if "mm_processor_kwargs" in r:
                row["mm_processor_kwargs"] = r["mm_processor_kwargs"]
            rows.append(row)
        out = sorted(self.processor(self.data.from_items(rows)).take_all(), key=lambda r: r["row"])
        results = []
        for r in out:
            tokens = [int(t) for t in r["generated_tokens"]]
            reason = stop_reason(options, phase, tokens, r["generated_text"])
            results.append((int(r["num_input_tokens"]), tokens, reason))
        return results
