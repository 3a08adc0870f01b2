"""Scoring one task from its embeddings: rankings, metrics, predictions and broken-model checks.

Two checks make a broken model obvious instead of silently printing its numbers:
- ``collapsed``: the embeddings of a side are near-identical. For unit vectors the total variance is
  1 - ||mean||^2 (0 when all are equal, about 1 when spread out); below ``MIN_SPREAD`` is flagged.
- ``chance``: the headline score is within two standard errors (at least 0.01) of its expectation
  under a uniformly random ranking of each query's pool (computed exactly, not sampled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tte_fast.eval.config import SearchConfig, TaskConfig
from tte_fast.eval.data import TaskData
from tte_fast.eval.metrics import KS, mean_metrics, query_metrics
from tte_fast.eval.search import rank_global, rank_local

MIN_SPREAD = 1e-3
MIN_MARGIN = 0.01


@dataclass
class TaskScore:
    summary: dict  # the task's entry in results.json
    predictions: list[dict]  # one per query: id, ranked ids, scores, relevant ids


def spread(embeddings: torch.Tensor) -> float:
    """1 - ||mean of the rows||^2: the total variance of unit-norm rows (0: all identical)."""
    if embeddings.shape[0] < 2:
        return 1.0
    return float(1.0 - embeddings.float().mean(0).pow(2).sum())


def chance_level(metric: str, pool: int, grades_in_pool: list[float], grades_all: list[float]) -> float:
    """Expected value of ``metric`` (``hit@k`` or ``ndcg_linear@k`` / ``ndcg_exp@k``) when a pool of
    ``pool`` candidates, holding relevant ones of ``grades_in_pool``, is ranked uniformly at random."""
    name, k = metric.split("@")
    k = int(k)
    relevant = [g for g in grades_in_pool if g > 0]
    if name == "hit":
        n_rel = len(relevant)
        miss = 1.0
        for i in range(min(k, pool)):
            miss *= max(pool - n_rel - i, 0) / (pool - i)
        return 1.0 - miss
    if name in ("ndcg_linear", "ndcg_exp"):
        gain = (lambda g: g) if name == "ndcg_linear" else (lambda g: 2.0**g - 1.0)
        ideal = sorted((g for g in grades_all if g > 0), reverse=True)[:k]
        idcg = sum(gain(g) / math.log2(i + 2) for i, g in enumerate(ideal))
        mean_gain = sum(gain(g) for g in relevant) / pool  # each position's expected gain
        return mean_gain * sum(1 / math.log2(i + 2) for i in range(min(k, pool))) / idcg
    raise ValueError(f"no chance level for {metric!r}")


def score_task(
    task: TaskConfig,
    data: TaskData,
    queries: torch.Tensor,
    corpus: torch.Tensor,
    search: SearchConfig,
    top_k: int = 10,
) -> TaskScore:
    depth = max(max(KS), top_k)
    if data.local:
        ranked = rank_local(queries, corpus, data.candidates, k=depth)
        pools = [len(set(c)) for c in data.candidates]
    else:
        s, i = rank_global(queries, corpus, depth, search.backend, **search.options())
        ranked = list(zip(s, i))
        pools = [len(data.corpus_ids)] * len(data.query_ids)

    rows, predictions, chances = [], [], []
    for q, (scores, indices) in enumerate(ranked):
        ids = [data.corpus_ids[j] for j in indices.tolist() if j >= 0]
        relevance = data.relevance[q]
        rows.append(query_metrics(ids, relevance, KS, task.metrics))
        in_pool = (
            [relevance.get(data.corpus_ids[j], 0.0) for j in set(data.candidates[q])]
            if data.local
            else list(relevance.values())
        )
        chances.append(chance_level(task.headline, pools[q], in_pool, list(relevance.values())))
        predictions.append(
            {
                "query_id": data.query_ids[q],
                "ranked": ids[:top_k],
                "scores": [round(float(x), 6) for x in scores[: len(ids)][:top_k]],
                "relevant": {c: g for c, g in relevance.items() if g > 0},
            }
        )

    metrics = mean_metrics(rows)
    headline = metrics[task.headline]
    chance = sum(chances) / len(chances)
    values = [r[task.headline] for r in rows]
    se = math.sqrt(sum((v - headline) ** 2 for v in values) / max(len(values) - 1, 1) / len(values))
    q_spread, c_spread = spread(queries), spread(corpus)
    flags = []
    if min(q_spread, c_spread) < MIN_SPREAD:
        flags.append("collapsed")
    if headline - chance < max(2 * se, MIN_MARGIN):
        flags.append("chance")
    summary = {
        "meta_task": task.meta_task,
        "modality": task.modality,
        "eval_type": task.eval_type,
        "num_queries": len(data.query_ids),
        "num_candidates": len(data.corpus_ids),
        "headline_metric": task.headline,
        "headline": headline,
        "chance": chance,
        "flags": flags,
        "embedding_spread": {"query": q_spread, "target": c_spread},
        "metrics": metrics,
    }
    return TaskScore(summary, predictions)
