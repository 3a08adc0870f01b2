"""The ``tte-fast traces`` config: the reasoner and its backend, the inputs, decoding, the output.

```yaml
reasoner:
  path: CKPT                      # checkpoint folder or id (tiny:qwen2_vl for a random tiny model)
  backend: engine                 # engine (ours) | vllm (offline LLM) | ray (Ray Data + vLLM)
  device: null                    # engine: default cuda if available
  dtype: null                     # default: the checkpoint's
  recipe: null                    # tte_fast.checkpoint.recipes
  options: {}                     # engine: more from_pretrained arguments
  vllm: {}                        # vllm / ray: LLM(...) arguments (tensor_parallel_size, ...)
  ray: {}                         # ray: concurrency, batch_size, accelerator_type
datasets:                         # training records, as train's data.datasets (or `tasks:`)
  - {path: train.jsonl, format: jsonl}       # format: jsonl | mmeb
records: pairs                    # pairs (query / pos) | sft (reasoner records: input)
tasks: null                       # evaluation tasks, exactly as in an eval config
sides: [query]                    # query, and target (pos of a pair, or the task's candidates)
decode: {max_think_tokens: null, max_answer_tokens: null}   # and do_sample, temperature, ...
batch_size: 8                     # engine slots / inputs per vLLM call
shard_size: 256
output_dir: traces_out
join: {reasoner_records: null, embedder_records: null, eval_cache: null}
```
Data paths start at the config file's folder; ``output_dir`` and the join outputs at the working
directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tte_fast.prompting.prompts import SIDES
from tte_fast.settings.checks import positive_int
from tte_fast.settings.params import GENERATION, EncodeParams
from tte_fast.settings.schema import ConfigError, build
from tte_fast.train.config import FORMATS, DatasetConfig

BACKENDS = ("engine", "vllm", "ray")
RECORDS = ("pairs", "sft")
# decode: the think budget and EncodeParams' sampling settings (side, thinking, batching: elsewhere).
DECODE_KEYS = ("max_think_tokens", *GENERATION)


@dataclass
class ReasonerConfig:
    path: str
    backend: str = "engine"
    device: str | None = None
    dtype: str | None = None
    recipe: str | None = None
    options: dict = field(default_factory=dict)
    vllm: dict = field(default_factory=dict)
    ray: dict = field(default_factory=dict)


@dataclass
class JoinConfig:
    """Where the joined records go (None: not written); relative to the working directory."""

    reasoner_records: str | None = None  # JSONL of {input, trace, answer}
    embedder_records: str | None = None  # JSONL of {query, pos, negs, query_trace, pos_trace}
    eval_cache: str | None = None  # the eval's cache_dir: trace files per task and side


@dataclass
class TracesConfig:
    reasoner: ReasonerConfig
    output_dir: str = "traces_out"
    datasets: list[DatasetConfig] = field(default_factory=list)
    records: str = "pairs"
    sides: list[str] = field(default_factory=lambda: ["query"])
    decode: dict = field(default_factory=dict)
    batch_size: int = 8
    shard_size: int = 256
    join: JoinConfig = field(default_factory=JoinConfig)
    base_dir: str = field(default=".", init=False)  # data paths start here (the config's folder)
    # Evaluation tasks (``tasks:``, a list or a mapping name -> task), read by the eval config's parser.
    tasks: list = field(default_factory=list, init=False)

    def decode_params(self) -> EncodeParams:
        return EncodeParams(batch_size=self.batch_size, **self.decode)

    def data_path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)


def parse_traces_config(raw: dict, base_dir: str = ".") -> TracesConfig:
    """A checked :class:`TracesConfig`; every bad value is a ConfigError naming its key."""
    raw = dict(raw)
    tasks = raw.pop("tasks", None)
    config = build(TracesConfig, raw)
    config.base_dir = base_dir
    r = config.reasoner
    if r.backend not in BACKENDS:
        raise ConfigError(f"reasoner.backend must be one of {BACKENDS}, got {r.backend!r}")
    if r.backend == "engine" and (r.vllm or r.ray):
        raise ConfigError("reasoner.vllm / reasoner.ray apply to the vllm and ray backends, not engine")
    if r.backend != "engine" and (r.options or r.device):
        raise ConfigError(f"reasoner.options / reasoner.device apply to the engine backend, not {r.backend}")
    if bool(config.datasets) == (tasks is not None):
        raise ConfigError("set either datasets (training records) or tasks (evaluation tasks), not both")
    for i, d in enumerate(config.datasets):
        if d.format not in FORMATS:
            raise ConfigError(f"datasets.{i}.format must be one of {FORMATS}, got {d.format!r}")
    if config.records not in RECORDS:
        raise ConfigError(f"records must be one of {RECORDS}, got {config.records!r}")
    if (
        not config.sides
        or any(s not in SIDES for s in config.sides)
        or len(set(config.sides)) < len(config.sides)
    ):
        raise ConfigError(f"sides must be distinct values of {list(SIDES)}, got {config.sides!r}")
    if config.records == "sft" and config.sides != ["query"]:
        raise ConfigError("reasoner (sft) records have one input each: sides must be [query]")
    unknown = sorted(set(config.decode) - set(DECODE_KEYS))
    if unknown:
        raise ConfigError(f"decode: unknown keys {unknown}; known: {list(DECODE_KEYS)}")
    positive_int("batch_size", config.batch_size, ConfigError)
    positive_int("shard_size", config.shard_size, ConfigError)
    try:
        config.decode_params()
    except ValueError as err:
        raise ConfigError(f"decode.{err}") from None
    if tasks is not None:
        from tte_fast.eval.config import parse_config as parse_eval_config

        config.tasks = parse_eval_config({"tasks": tasks}, base_dir).tasks
    return config
