"""Retrieval metrics of one ranked list against graded relevance, at k in {1, 5, 10}.

A candidate is relevant when its grade is > 0. With R relevant candidates in all (counted from the
relevance judgments, also those the ranking missed) and rel_i the grade at rank i (from 0):

- ``hit@k``: 1 if a relevant candidate is in the top k, else 0.
- ``precision@k``: relevant candidates in the top k, divided by k (also when the list is shorter).
- ``recall@k``: relevant candidates in the top k, divided by R.
- ``f1@k``: the harmonic mean of precision@k and recall@k (0 when both are 0), as VLM2Vec reports it.
- ``map@k``: the sum of precision@(i+1) over the relevant ranks i < k, divided by R (trec_eval's
  ``map_cut``).
- ``mrr@k``: 1 / (rank + 1) of the first relevant candidate in the top k, else 0.
- ``ndcg_linear@k``: DCG = sum over i < k of rel_i / log2(i + 2), divided by the DCG of the ideal
  order (the grades sorted, best first); ``ndcg_exp@k`` uses the gain 2^rel - 1 instead of rel.

A candidate ranked twice counts once, at its first rank. Ranking ties are broken before this (see
``tte_fast.eval.search``): these functions take the order as given.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

from tte_fast.settings.checks import positive_int

KS = (1, 5, 10)
METRICS = ("hit", "ndcg_linear", "ndcg_exp", "precision", "recall", "f1", "map", "mrr")


def metric_names(metrics: Iterable[str] = METRICS, ks: Iterable[int] = KS) -> list[str]:
    """``["hit@1", "hit@5", ...]``, metric-major."""
    return [f"{m}@{k}" for m in metrics for k in ks]


def check_metrics(metrics: Iterable[str]) -> list[str]:
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    return metrics


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def query_metrics(
    ranked: Sequence[Hashable],
    relevance: Mapping[Hashable, float],
    ks: Iterable[int] = KS,
    metrics: Iterable[str] = METRICS,
) -> dict[str, float]:
    """Every metric at every k for one query: ``{"hit@1": ..., "ndcg_linear@5": ..., ...}``.

    ``ranked`` is the candidate ids best first (any length; a repeated id counts at its first rank);
    ``relevance`` maps ids to grades (> 0 is relevant). A query with no relevant candidate cannot be
    scored: that is an error.
    """
    ks = sorted({positive_int("k", k) for k in ks})
    if not ks:
        raise ValueError("no k given")
    metrics = check_metrics(metrics)
    grades = sorted((float(g) for g in relevance.values() if g > 0), reverse=True)
    total = len(grades)
    if total == 0:
        raise ValueError("the query has no relevant candidate (every grade is <= 0)")
    order = list(dict.fromkeys(ranked))[: ks[-1]]
    gains = [float(relevance.get(c, 0.0)) if relevance.get(c, 0.0) > 0 else 0.0 for c in order]

    out: dict[str, float] = {}
    for k in ks:
        top = gains[:k]
        hits = [g > 0 for g in top]
        n_hits = sum(hits)
        first = next((i for i, h in enumerate(hits) if h), None)
        precisions, seen = [], 0
        for i, h in enumerate(hits):
            if h:
                seen += 1
                precisions.append(seen / (i + 1))
        precision, recall = n_hits / k, n_hits / total
        values = {
            "hit": 1.0 if n_hits else 0.0,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if n_hits else 0.0,
            "map": sum(precisions) / total,
            "mrr": 0.0 if first is None else 1.0 / (first + 1),
            "ndcg_linear": _dcg(top) / _dcg(grades[:k]),
            "ndcg_exp": _dcg([2.0**g - 1.0 for g in top]) / _dcg([2.0**g - 1.0 for g in grades[:k]]),
        }
        for m in metrics:
            out[f"{m}@{k}"] = values[m]
    return {name: out[name] for name in metric_names(metrics, ks)}


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over queries (or tasks); keys in the first row's order."""
    if not rows:
        return {}
    return {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]}
