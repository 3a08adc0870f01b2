"""Retrieval metrics against hand-computed cases and an independent computation (scikit-learn), and
the chance levels that flag broken models against brute force over every ranking."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from tte_fast.eval.metrics import KS, metric_names, query_metrics
from tte_fast.eval.scoring import chance_level, spread

L2 = math.log2


def test_single_relevant_at_rank_three():
    m = query_metrics(["a", "b", "c", "d", "e", "f"], {"c": 1})
    assert m["hit@1"] == 0 and m["hit@5"] == 1 and m["hit@10"] == 1
    assert m["mrr@1"] == 0 and m["mrr@5"] == pytest.approx(1 / 3)
    assert m["precision@5"] == pytest.approx(1 / 5) and m["precision@10"] == pytest.approx(1 / 10)
    assert m["recall@1"] == 0 and m["recall@5"] == 1
    assert m["map@5"] == pytest.approx(1 / 3)
    # One relevant candidate found: precision 1/k, recall 1, so f1@k = 2 / (k + 1) (VLM2Vec's
    # ImageNet-1K report has f1@5 = 0.3187 beside hit@5 = 0.956 = 0.3187 * 6 / 2).
    assert m["f1@5"] == pytest.approx(2 / 6) and m["f1@10"] == pytest.approx(2 / 11)
    # DCG = 1 / log2(2 + 2); the ideal puts the one relevant first: 1 / log2(2).
    assert m["ndcg_linear@5"] == pytest.approx(1 / L2(4))
    assert m["ndcg_exp@5"] == pytest.approx(1 / L2(4))
    assert m["ndcg_linear@1"] == 0


def test_graded_relevance_linear_and_exponential_gain():
    ranked = ["x", "b", "a", "y", "c"]
    rel = {"a": 3, "b": 1, "c": 2, "z": 0}
    m = query_metrics(ranked, rel)
    dcg = 1 / L2(3) + 3 / L2(4) + 2 / L2(6)
    idcg = 3 / L2(2) + 2 / L2(3) + 1 / L2(4)
    assert m["ndcg_linear@5"] == pytest.approx(dcg / idcg)
    dcg_e = 1 / L2(3) + 7 / L2(4) + 3 / L2(6)
    idcg_e = 7 / L2(2) + 3 / L2(3) + 1 / L2(4)
    assert m["ndcg_exp@5"] == pytest.approx(dcg_e / idcg_e)
    # The grade-0 judgment is not relevant: R = 3.
    assert m["recall@5"] == pytest.approx(1.0) and m["recall@1"] == 0
    assert m["map@5"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert m["precision@5"] == pytest.approx(3 / 5)
    assert m["f1@5"] == pytest.approx(2 * (3 / 5) * 1.0 / (3 / 5 + 1.0))  # = 0.75
    assert m["f1@1"] == 0  # nothing relevant in the top 1: precision and recall are both 0
    # At k = 1 the ideal DCG is the best grade alone.
    assert m["ndcg_linear@1"] == 0


def test_relevant_missing_from_the_ranking_still_counts_in_the_ideal():
    m = query_metrics(["a", "b"], {"a": 1, "zz": 1})
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["map@10"] == pytest.approx(0.5)
    assert m["ndcg_linear@10"] == pytest.approx(1 / (1 + 1 / L2(3)))


def test_k_larger_than_the_list():
    m = query_metrics(["p", "n"], {"p": 1})
    assert m["hit@10"] == 1 and m["recall@10"] == 1 and m["mrr@10"] == 1
    assert m["precision@10"] == pytest.approx(1 / 10)  # divided by k, as trec_eval's P_k
    assert m["ndcg_linear@10"] == pytest.approx(1.0)


def test_duplicate_candidates_count_once():
    with_dup = query_metrics(["n1", "p", "p", "n2", "p"], {"p": 1})
    without = query_metrics(["n1", "p", "n2"], {"p": 1})
    assert with_dup == without
    assert with_dup["precision@5"] == pytest.approx(1 / 5)
    assert with_dup["recall@5"] == 1.0


def test_query_without_relevant_candidates_is_an_error():
    with pytest.raises(ValueError, match="no relevant"):
        query_metrics(["a"], {"a": 0})


def test_names_and_selection():
    m = query_metrics(["a"], {"a": 1}, metrics=["hit", "mrr"])
    assert (
        list(m)
        == metric_names(["hit", "mrr"], KS)
        == ["hit@1", "hit@5", "hit@10", "mrr@1", "mrr@5", "mrr@10"]
    )
    with pytest.raises(ValueError, match="unknown metrics"):
        query_metrics(["a"], {"a": 1}, metrics=["auc"])


def test_ndcg_matches_scikit_learn_on_random_graded_rankings():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 30))
        grades = rng.integers(0, 4, n).astype(float)
        grades[rng.integers(0, n)] = max(grades.max(), 1.0)  # at least one relevant
        scores = rng.permutation(n).astype(float)  # distinct: no ties for sklearn to average
        ranked = list(np.argsort(-scores))
        rel = {i: g for i, g in enumerate(grades)}
        ours = query_metrics(ranked, rel)
        for k in KS:
            ref = sklearn_metrics.ndcg_score(grades[None], scores[None], k=k)
            assert ours[f"ndcg_linear@{k}"] == pytest.approx(ref, abs=1e-12)
            # Binary average precision over the full ranking (k >= n) equals sklearn's.
        if n <= 10:
            ap = sklearn_metrics.average_precision_score(grades > 0, scores)
            assert ours["map@10"] == pytest.approx(ap, abs=1e-12)


@pytest.mark.parametrize("metric", ["hit@1", "hit@5", "ndcg_linear@5", "ndcg_exp@5"])
def test_chance_level_equals_the_mean_over_every_ranking(metric):
    pool = ["a", "b", "c", "d", "e", "f"]
    rel = {"a": 2, "c": 1, "outside": 1}  # one relevant candidate outside the pool
    values = [query_metrics(list(p), rel)[metric] for p in itertools.permutations(pool)]
    in_pool = [rel.get(c, 0) for c in pool]
    assert chance_level(metric, len(pool), in_pool, list(rel.values())) == pytest.approx(np.mean(values))


def test_chance_level_small_pool_and_spread():
    assert chance_level("hit@5", 3, [1, 0, 0], [1]) == pytest.approx(1.0)
    assert chance_level("hit@1", 1000, [1] + [0] * 999, [1]) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        chance_level("map@5", 3, [1, 0, 0], [1])
    import torch

    same = torch.nn.functional.normalize(torch.ones(5, 8), dim=1)
    assert spread(same) == pytest.approx(0.0, abs=1e-6)
    random.seed(0)
    spread_out = torch.nn.functional.normalize(torch.randn(2000, 64), dim=1)
    assert spread(spread_out) > 0.95


def _task_data(local: bool):
    """12 queries, query i's positive is d_i, listed first among its 4 candidates (as in MMEB),
    put in the readers' corpus order."""
    from tte_fast.eval.records import finish_task

    n = 12
    ids = [f"d{i}" for i in range(n)]
    lists = [[ids[(i + j) % n] for j in range(4)] for i in range(n)] if local else None
    return finish_task(
        "t", [f"q{i}" for i in range(n)], [{}] * n, ids, [{}] * n, [{f"d{i}": 1.0} for i in range(n)], lists
    )


@pytest.mark.parametrize("local", [True, False])
def test_broken_models_are_flagged_and_good_ones_are_not(local):
    import torch

    from tte_fast.eval.config import SearchConfig, TaskConfig
    from tte_fast.eval.scoring import score_task

    task = TaskConfig(name="t", data_path="-", eval_type="local" if local else "global")
    data = _task_data(local)
    good = torch.nn.functional.normalize(
        torch.randn(12, 16, generator=torch.Generator().manual_seed(0)), dim=1
    )
    corpus = good[[int(c[1:]) for c in data.corpus_ids]]  # d_i's embedding is query i's
    ok = score_task(task, data, good, corpus, SearchConfig())
    assert ok.summary["headline"] == 1.0 and ok.summary["flags"] == []
    assert ok.summary["chance"] == pytest.approx(1 / 4 if local else 1 / 12)
    assert ok.predictions[0]["ranked"][0] == "d0" and ok.predictions[0]["relevant"] == {"d0": 1.0}

    same = torch.nn.functional.normalize(torch.ones(12, 16), dim=1)
    broken = score_task(task, data, same, same, SearchConfig())
    assert broken.summary["flags"] == ["collapsed", "chance"]
    # Equal scores rank by the corpus order, not by which candidate is the positive.
    assert broken.summary["headline"] < 0.5


def test_a_local_task_ranks_each_query_only_among_its_own_candidates():
    """Query i is nearest to d_{i+6}, which is not among its candidates d_i .. d_{i+3}, and next
    nearest to its positive d_i: ranked locally every query hits at 1; against the whole corpus none would."""
    import torch

    from tte_fast.eval.config import SearchConfig, TaskConfig
    from tte_fast.eval.scoring import score_task

    task = TaskConfig(name="t", data_path="-", eval_type="local")
    data = _task_data(local=True)
    basis = torch.eye(16)[:12]  # d_j's embedding: orthogonal unit vectors, so scores are exact
    queries = torch.nn.functional.normalize(basis + 2 * basis.roll(-6, dims=0), dim=1)
    corpus = basis[[int(c[1:]) for c in data.corpus_ids]]
    scored = score_task(task, data, queries, corpus, SearchConfig())
    for q, prediction in enumerate(scored.predictions):
        own = {data.corpus_ids[j] for j in data.candidates[q]}
        assert set(prediction["ranked"]) == own, prediction  # d_{q+6} never shows up
        assert prediction["ranked"][0] == f"d{q}"
    assert scored.summary["headline"] == 1.0 and scored.summary["chance"] == pytest.approx(1 / 4)
