"""The evaluation config: the model, how to encode and search, and the tasks (VLM2Vec V2 layout).

```yaml
model: {path: CKPT}                    # UnifiedTTE; or {reasoner: A, embedder: B} for TwoModelTTE
encode: {batch_size: 8, max_think_tokens: null, think_queries: null, think_targets: null}
search: {backend: exact}               # exact | faiss_flat | faiss_ivf | faiss_hnsw
output_dir: eval_out                   # results.json, predictions/, the resolved config
cache_dir: null                        # default: OUTPUT_DIR/cache
suite: null                            # {name: mmeb_v2, data_root, modalities, tasks, sample_cap}
tasks:                                 # a list, or a mapping name -> task (as VLM2Vec's YAMLs)
  - name: MSCOCO_i2t
    dataset_parser: mmeb               # mmeb (qry_inst, qry_text, tgt_text[], ...), beir, video or tte
    data_path: data/MSCOCO_i2t.parquet # a file or folder; or hf_dataset (+ hf_subset) instead
    dataset_split: null                # which split's shards a folder or hf_dataset gives (hf: test)
    image_root: images/
    eval_type: local                   # local | global
    meta_task: retrieval               # classification, vqa, retrieval, grounding, video_*, visdoc, ...
    metrics: [hit, ndcg_linear]        # default: all
    sample_cap: 1000                   # alias: num_sample_per_subset
  - name: MSR-VTT                      # a video task: VLM2Vec's rows and their saved frame folders
    dataset_parser: video
    video_parser: msrvtt               # VLM2Vec's dataset_parser (tte_fast.eval.video_rows)
    hf_dataset: VLM2Vec/MSR-VTT
    frame_root: video-tasks/frames/video_ret/MSR-VTT
    num_frames: 8                      # frames read of each folder's saved ones
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tte_fast.eval.metrics import METRICS, check_metrics
from tte_fast.settings.checks import positive_int
from tte_fast.settings.params import EncodeParams
from tte_fast.settings.schema import ConfigError, build

PARSERS = ("mmeb", "beir", "tte", "video")
HF_PARSERS = ("mmeb", "beir", "video")  # the layouts the datasets library can read
EVAL_TYPES = ("local", "global")
# meta-task -> modality; the headline metric follows the modality (MMEB-V2).
META_TASKS = {
    "classification": "image",
    "vqa": "image",
    "retrieval": "image",
    "grounding": "image",
    "video": "video",
    "video_classification": "video",
    "video_qa": "video",
    "video_retrieval": "video",
    "moment_retrieval": "video",
    "visdoc": "visdoc",
    "vidore_v1": "visdoc",
    "vidore_v2": "visdoc",
    "visrag": "visdoc",
    "visdoc_ood": "visdoc",
}
HEADLINES = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}
SECTIONS = ("tasks", "model", "encode", "search")


EvalConfigError = ConfigError  # the name this package used before configs shared one error


@dataclass
class TaskConfig:
    name: str
    data_path: str | None = None
    dataset_parser: str = "mmeb"
    hf_dataset: str | None = None  # a dataset id for the datasets library, instead of data_path
    hf_subset: str | None = None  # its config name (MMEB_Test_Instruct: the task's name)
    dataset_split: str | None = None
    language: str | None = None  # beir: keep the queries of this language (ViDoRe v2)
    image_root: str | None = None
    eval_type: str = "local"
    meta_task: str | None = None  # default: visdoc for beir tasks, else retrieval
    modality: str | None = None
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    sample_cap: int | None = None
    query_instruction: str | None = None
    target_instruction: str | None = None
    video_parser: str | None = None  # video: the rows' layout (VLM2Vec's dataset_parser name)
    frame_root: str | None = None  # video: the folder of each video's saved frames
    num_frames: int = 8  # video: frames read from each folder

    def __post_init__(self):
        where = f"task {self.name!r}"
        if self.dataset_parser == "video":
            _check_video_task(where, self)
        elif self.video_parser is not None or self.frame_root is not None:
            raise EvalConfigError(f"{where}: video_parser and frame_root belong to dataset_parser 'video'")
        if self.dataset_parser not in PARSERS:
            raise EvalConfigError(
                f"{where}: dataset_parser must be one of {PARSERS}, got {self.dataset_parser!r}"
            )
        if self.eval_type not in EVAL_TYPES:
            raise EvalConfigError(f"{where}: eval_type must be one of {EVAL_TYPES}, got {self.eval_type!r}")
        if (self.data_path is None) == (self.hf_dataset is None):
            raise EvalConfigError(f"{where}: set either data_path or hf_dataset (one of them)")
        if self.hf_dataset is not None and self.dataset_parser not in HF_PARSERS:
            raise EvalConfigError(
                f"{where}: hf_dataset works with dataset_parser {HF_PARSERS}, not {self.dataset_parser!r}"
            )
        if self.language is not None and self.dataset_parser != "beir":
            raise EvalConfigError(f"{where}: language filters beir queries; {self.dataset_parser!r} has none")
        if self.meta_task is None:
            defaults = {"beir": "visdoc", "video": "video"}
            self.meta_task = defaults.get(self.dataset_parser, "retrieval")
        if self.modality is None:
            if self.meta_task not in META_TASKS:
                raise EvalConfigError(
                    f"{where}: unknown meta_task {self.meta_task!r}; use one of {sorted(META_TASKS)} "
                    f"or also set modality (one of {sorted(HEADLINES)})"
                )
            self.modality = META_TASKS[self.meta_task]
        if self.modality not in HEADLINES:
            raise EvalConfigError(
                f"{where}: modality must be one of {sorted(HEADLINES)}, got {self.modality!r}"
            )
        try:
            self.metrics = check_metrics(self.metrics)
        except ValueError as err:
            raise EvalConfigError(f"{where}: {err}") from None
        metric = self.headline.split("@")[0]
        if metric not in self.metrics:
            self.metrics.append(metric)  # the headline is always computed
        if self.sample_cap is not None:
            positive_int(f"{where}: sample_cap", self.sample_cap, EvalConfigError)

    @property
    def headline(self) -> str:
        return HEADLINES[self.modality]


@dataclass
class EncodeConfig:
    """The ``encode:`` section: the :class:`EncodeParams` of each side (greedy: the caches key on the
    budgets), thinking per side and progress bars."""

    batch_size: int = 8
    max_think_tokens: int | None = None  # None: the model's saved setting
    max_answer_tokens: int | None = None
    think_queries: bool | None = None  # None: the model's setting (queries think)
    think_targets: bool | None = None  # None: the model's setting (candidates do not)
    progress: bool | None = None

    def __post_init__(self):
        try:
            self.params("query")
        except ValueError as err:
            raise ConfigError(f"encode.{err}") from None

    def params(self, side: str) -> EncodeParams:
        think = self.think_queries if side == "query" else self.think_targets
        return EncodeParams(
            side=side,
            think=think,
            max_think_tokens=self.max_think_tokens,
            max_answer_tokens=self.max_answer_tokens,
            batch_size=self.batch_size,
        )


@dataclass
class SearchConfig:
    backend: str = "exact"
    chunk_size: int = 65536
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128

    def options(self) -> dict:
        if self.backend == "exact":
            return {"chunk_size": self.chunk_size}
        if self.backend == "faiss_ivf":
            return {"nlist": self.nlist, "nprobe": self.nprobe}
        if self.backend == "faiss_hnsw":
            return {"hnsw_m": self.hnsw_m, "ef_search": self.ef_search}
        return {}


@dataclass
class EvalConfig:
    tasks: list[TaskConfig] = field(default_factory=list)
    model: dict = field(default_factory=dict)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    output_dir: str = "eval_out"
    cache_dir: str | None = None
    cache: bool = True
    top_k: int = 10  # predictions kept per query
    base_dir: str = field(default=".", init=False)  # relative data paths start here (the config's folder)

    @property
    def cache_path(self) -> str:
        return self.cache_dir or os.path.join(self.output_dir, "cache")


def _check_video_task(where: str, task: TaskConfig) -> None:
    from tte_fast.eval.video_rows import VIDEO_PARSERS

    if task.video_parser not in VIDEO_PARSERS:
        raise EvalConfigError(
            f"{where}: video_parser must be one of {list(VIDEO_PARSERS)}, got {task.video_parser!r}"
        )
    if not task.frame_root:
        raise EvalConfigError(f"{where}: a video task needs frame_root (the folder of its videos' frames)")
    positive_int(f"{where}: num_frames", task.num_frames, EvalConfigError)


def _task_list(tasks) -> list[dict]:
    if isinstance(tasks, dict):  # VLM2Vec style: name -> settings
        return [{"name": name, **(spec or {})} for name, spec in tasks.items()]
    if isinstance(tasks, list):
        return tasks
    raise EvalConfigError(f"tasks must be a list or a mapping, got {type(tasks).__name__}")


def _task(i: int, raw) -> dict:
    """Task ``i`` with VLM2Vec's ``num_sample_per_subset`` read as ``sample_cap``, and an entry of
    VLM2Vec's YAMLs (``dataset_parser: image_cls``, ``vidore``, ...) read as the MMEB-V2 task it names."""
    if not isinstance(raw, dict):
        raise EvalConfigError(f"tasks.{i} must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    if "num_sample_per_subset" in raw:
        raw.setdefault("sample_cap", raw.pop("num_sample_per_subset"))
    if not raw.get("name"):
        raise EvalConfigError(f"tasks.{i} has no name")
    from tte_fast.eval.mmeb_v2 import from_vlm2vec, is_vlm2vec_entry

    if is_vlm2vec_entry(raw):  # an entry of VLM2Vec's own YAMLs
        raw = from_vlm2vec(raw)
    if not raw.get("data_path") and not raw.get("hf_dataset"):
        raise EvalConfigError(f"tasks.{i} ({raw['name']}) has no data_path (or hf_dataset)")
    return raw


def parse_config(data: dict, base_dir: str = ".") -> EvalConfig:
    """An :class:`EvalConfig` from a loaded YAML mapping; relative paths start at ``base_dir``."""
    data = {k: v for k, v in data.items() if v is not None or k not in SECTIONS}  # null: the defaults
    tasks = _task_list(data.pop("tasks", None) or [])
    suite = data.pop("suite", None)
    if suite is not None:  # a named benchmark's tasks, after any listed by hand
        from tte_fast.eval.mmeb_v2 import suite_tasks

        tasks = tasks + suite_tasks(suite)
    if tasks:
        data["tasks"] = [_task(i, raw) for i, raw in enumerate(tasks)]
    config = build(EvalConfig, data)
    if not config.tasks:
        raise EvalConfigError("the config has no tasks")
    config.base_dir = base_dir
    names = [t.name for t in config.tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalConfigError(f"task names must be unique; repeated: {duplicates}")
    from tte_fast.eval.search import BACKENDS

    if config.search.backend not in BACKENDS:
        raise EvalConfigError(f"search.backend must be one of {BACKENDS}, got {config.search.backend!r}")
    return config
