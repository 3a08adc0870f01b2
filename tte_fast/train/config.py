"""The training config: one YAML mapping per run, checked into dataclasses before any work starts.

Sections and their defaults are the fields below, read by :func:`tte_fast.settings.schema.build`: an unknown
key or a wrong type anywhere is an error naming its dotted path.
``docs/train.md`` describes every setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tte_fast.settings.checks import non_negative_int, positive_int
from tte_fast.settings.schema import ConfigError, build

JOBS = ("reasoner", "embedder", "head")
FORMATS = ("jsonl", "mmeb")
BAD_DATA = ("fail", "skip")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LANGUAGE_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class DatasetConfig:
    """One dataset of the mixture: a JSONL file of our records, or the MMEB layout (parquet or JSONL)."""

    path: str
    format: str = "jsonl"
    name: str | None = None  # default: the file name
    image_root: str | None = None  # default: the data file's folder
    weight: float = 1.0
    max_samples: int | None = None  # VLM2Vec's num_sample_per_subset
    instruction: str | None = None  # query instruction for every record of this dataset


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    bad_data: str = "fail"  # a missing / corrupt image or an over-long record: fail | skip
    num_workers: int = 0
    max_length: int | None = None  # tokens per sequence; longer records follow bad_data
    negatives: int = 0  # hard negatives per query (embedder, head); records must carry that many


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 8  # per process; the global batch is batch_size x processes
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU
    gradient_checkpointing: bool = False
    freeze_vision: bool = True  # false: the vision tower trains too (any job but head)
    vision_lr: float | None = None  # the vision tower's own peak learning rate (None: train.lr)
    cpu: bool = False  # train on CPU even when CUDA is there
    fsdp: bool = False  # shard the fully fine-tuned model with FSDP2 (fully_shard) across processes


@dataclass
class ContrastiveConfig:
    temperature: float = 0.02
    chunk_size: int = 8
    target_chunk_size: int | None = None


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 64
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_PROJECTIONS))
    merge: bool = True  # merge into the weights on save; false writes the adapter alone


@dataclass
class HeadConfig:
    layers: int = 8
    traces: str = "data"  # data: the records' query_trace; generate: the frozen model writes them once
    max_think_tokens: int | None = None
    generate_batch_size: int = 8


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0: none
    keep: int = 2


@dataclass
class LogConfig:
    every: int = 1
    progress: bool = True


@dataclass
class RunConfig:
    job: str
    model: str
    output_dir: str
    data: DataConfig
    seed: int = 0
    model_dtype: str = "float32"  # the trained weights' dtype (mixed precision computes in bf16)
    prompts: dict = field(default_factory=dict)  # PromptConfig overrides, saved with the model
    train: TrainConfig = field(default_factory=TrainConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def contrastive_job(self) -> bool:
        return self.job in ("embedder", "head")


def parse_config(raw: dict) -> RunConfig:
    """A checked :class:`RunConfig` from a resolved YAML mapping."""
    config = build(RunConfig, raw)
    _check(config)
    return config


def _check(c: RunConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(c.job in JOBS, f"job must be one of {JOBS}, got {c.job!r}")
    need(bool(c.data.datasets), "data.datasets must list at least one dataset")
    for i, d in enumerate(c.data.datasets):
        need(d.format in FORMATS, f"data.datasets.{i}.format must be one of {FORMATS}, got {d.format!r}")
        need(d.weight > 0 and math.isfinite(d.weight), f"data.datasets.{i}.weight must be positive")
        if d.max_samples is not None:
            positive_int(f"data.datasets.{i}.max_samples", d.max_samples, ConfigError)
    need(c.data.bad_data in BAD_DATA, f"data.bad_data must be one of {BAD_DATA}, got {c.data.bad_data!r}")
    non_negative_int("data.num_workers", c.data.num_workers, ConfigError)
    non_negative_int("data.negatives", c.data.negatives, ConfigError)
    t = c.train
    positive_int("train.steps", t.steps, ConfigError)
    positive_int("train.batch_size", t.batch_size, ConfigError)
    need(t.lr > 0, "train.lr must be positive")
    need(t.vision_lr is None or t.vision_lr > 0, f"train.vision_lr must be positive, got {t.vision_lr!r}")
    non_negative_int("train.warmup_steps", t.warmup_steps, ConfigError)
    need(
        t.mixed_precision in MIXED_PRECISION,
        f"train.mixed_precision must be one of {MIXED_PRECISION}, got {t.mixed_precision!r}",
    )
    if t.fsdp:
        need(c.job != "head", "train.fsdp shards a fully fine-tuned model; the head job trains only the head")
        need(not c.lora.enabled, "train.fsdp is for full fine-tuning: set lora.enabled: false")
        need(
            t.mixed_precision != "fp16",
            "train.fsdp with fp16 is not supported (sharded gradients need a sharded scaler): use bf16",
        )
    need(c.contrastive.temperature > 0, "contrastive.temperature must be positive")
    positive_int("contrastive.chunk_size", c.contrastive.chunk_size, ConfigError)
    need(
        c.head.traces in ("data", "generate"), f"head.traces must be data or generate, got {c.head.traces!r}"
    )
    non_negative_int("checkpoint.every", c.checkpoint.every, ConfigError)
    positive_int("checkpoint.keep", c.checkpoint.keep, ConfigError)
    positive_int("log.every", c.log.every, ConfigError)
    need(c.job != "reasoner" or c.data.negatives == 0, "data.negatives applies to the embedder and head jobs")
