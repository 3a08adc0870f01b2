"""The evaluation job: load the model, then per task read, encode (through the caches), score; then
aggregate, print the table and write ``results.json``, ``predictions/*.jsonl``, ``timings.json`` and
the same results in VLM2Vec's layout (``vlm2vec/``).

Under torch.distributed every process encodes its share and scores the gathered embeddings;
process 0 prints and writes.
"""

from __future__ import annotations

import json
import os
import time

from tqdm.auto import tqdm

from tte_fast.checkpoint.load import load_tte
from tte_fast.distributed import world
from tte_fast.eval.config import EvalConfig
from tte_fast.eval.data import read_task
from tte_fast.eval.encoder import ModelRunner
from tte_fast.eval.report import build_results, format_table, write_outputs
from tte_fast.eval.scoring import score_task
from tte_fast.eval.vlm2vec_outputs import write_vlm2vec_outputs

MODEL_KEYS = {"path", "reasoner", "embedder", "device", "dtype", "recipe", "options"}


def load_model(spec: dict, scratch_dir: str):
    """A model from the config's ``model`` mapping: ``path`` (UnifiedTTE) or ``reasoner`` +
    ``embedder`` (TwoModelTTE), each a checkpoint or ``tiny:qwen2_vl``; ``device``, ``dtype``,
    ``recipe`` (``tte_fast.checkpoint.recipes``) and ``options`` (more ``from_pretrained``
    arguments) apply to either."""
    unknown = sorted(set(spec) - MODEL_KEYS)
    if unknown:
        raise ValueError(f"model: unknown keys {unknown}; known: {sorted(MODEL_KEYS)}")
    kwargs = {"device": spec.get("device"), "dtype": spec.get("dtype"), **(spec.get("options") or {})}
    if spec.get("recipe"):
        kwargs["recipe"] = spec["recipe"]
    if spec.get("reasoner") or spec.get("embedder"):
        if not (spec.get("reasoner") and spec.get("embedder")):
            raise ValueError("model: a two-model pipeline needs both reasoner and embedder")
        return load_tte(spec["embedder"], spec["reasoner"], scratch_dir, **kwargs)
    if not spec.get("path"):
        raise ValueError("model: set path (UnifiedTTE) or reasoner and embedder (TwoModelTTE)")
    return load_tte(spec["path"], scratch_dir=scratch_dir, **kwargs)


def model_name(spec: dict) -> str:
    """What VLM2Vec's reports call the model: the checkpoint folder's name (the embedder's of a pair)."""
    path = spec.get("embedder") or spec.get("path")
    return os.path.basename(str(path).rstrip("/\\")) if path else "model"


def evaluate(config: EvalConfig, model=None, verbose: bool = True) -> dict:
    """Run every task of ``config`` with ``model`` (loaded from ``config.model`` when None) and
    return the results (the content of ``results.json``)."""
    rank, _ = world()
    if model is None:
        model = load_model(config.model, config.cache_path)
    runner = ModelRunner(model, config.encode, config.cache_path if config.cache else None)
    summaries, predictions, timings = {}, {}, {}
    for task in tqdm(config.tasks, desc="tasks", unit="task", disable=not verbose or rank != 0):
        start = time.perf_counter()
        data = read_task(task, config.base_dir)
        q_emb, q_stats = runner.encode(task.name, "query", data.queries, data.query_ids)
        c_emb, c_stats = runner.encode(task.name, "target", data.corpus, data.corpus_ids)
        scored = score_task(task, data, q_emb, c_emb, config.search, config.top_k)
        scored.summary["encode"] = {"query": q_stats.to_dict(), "target": c_stats.to_dict()}
        summaries[task.name], predictions[task.name] = scored.summary, scored.predictions
        timings[task.name] = time.perf_counter() - start
    settings = {
        "search": config.search.backend,
        "top_k": config.top_k,
        "batch_size": config.encode.batch_size,
    }
    results = build_results(summaries, runner.describe(), settings)
    if rank == 0:
        write_outputs(config.output_dir, results, predictions)
        write_vlm2vec_outputs(config.output_dir, results, predictions, model_name(config.model))
        with open(os.path.join(config.output_dir, "timings.json"), "w", encoding="utf-8") as f:
            json.dump({"seconds": timings}, f, indent=2)
        if verbose:
            print(format_table(results, timings))
            print(f"results: {os.path.join(config.output_dir, 'results.json')}")
    return results
