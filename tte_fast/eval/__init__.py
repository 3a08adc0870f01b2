"""MMEB-style evaluation: tasks, readers, encoding through caches, ranking, metrics and reports.

``tte-fast eval CONFIG.yaml [key=value ...]`` runs a config; from Python::

    from tte_fast.eval import evaluate, parse_config
    results = evaluate(parse_config(yaml_mapping), model=my_model)

See docs/eval.md for the config, the data layouts (MMEB, BEIR, ours; files or the ``datasets``
library), the MMEB-V2 suite, the metrics, the outputs (also in VLM2Vec's layout) and the caches.
"""

from tte_fast.eval.config import EvalConfig, EvalConfigError, TaskConfig, parse_config
from tte_fast.eval.data import EvalDataError, TaskData, read_task
from tte_fast.eval.encoder import ModelRunner
from tte_fast.eval.metrics import KS, METRICS, query_metrics
from tte_fast.eval.mmeb_v2 import TASKS as MMEB_V2_TASKS
from tte_fast.eval.runner import evaluate, load_model
from tte_fast.eval.search import rank_global, rank_local

__all__ = [
    "KS",
    "METRICS",
    "MMEB_V2_TASKS",
    "EvalConfig",
    "EvalConfigError",
    "EvalDataError",
    "ModelRunner",
    "TaskConfig",
    "TaskData",
    "evaluate",
    "load_model",
    "parse_config",
    "query_metrics",
    "rank_global",
    "rank_local",
    "read_task",
]
