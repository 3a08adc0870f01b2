"""Ranking: exact chunked top-k against a full stable sort (ties included), local against global
when every list is the whole corpus, FAISS flat against exact, approximate indexes close to it."""

from __future__ import annotations

import pytest
import torch

from tte_fast.eval.search import exact_topk, rank_global, rank_local, select_topk


def reference_topk(q, c, k):
    """Every score, sorted by score descending then index ascending (a stable full sort).

    Scores are float64 sums rounded to float32, as the search defines them; summed pair by pair, so
    duplicate candidates get bit-equal scores (a float64 matmul may round columns differently, which
    would split ties by 1e-17 and make this reference order them by noise)."""
    scores = (q.double()[:, None, :] * c.double()[None]).sum(-1).float().double()
    out_s, out_i = [], []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        out_i.append(order)
        out_s.append([row[j] for j in order])
    return torch.tensor(out_s), torch.tensor(out_i)


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def tied_corpus():
    """A corpus with many exact duplicates, so scores tie across chunk boundaries."""
    base = unit(7, 16, 1)
    pick = torch.tensor([3, 1, 3, 0, 5, 3, 1, 6, 2, 3, 4, 1, 0, 3, 6, 5, 2, 3, 1, 0, 3, 4, 5])
    return base[pick]


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_exact_topk_matches_a_stable_full_sort_with_ties(chunk, k):
    q, c = unit(9, 16, 2), tied_corpus()
    q[3] = c[0]  # a query equal to some candidates: ties at the top
    s, i = exact_topk(q, c, k, chunk_size=chunk, query_chunk_size=4)
    ref_s, ref_i = reference_topk(q, c, k)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s.float())


def test_all_equal_scores_rank_by_index():
    c = torch.nn.functional.normalize(torch.ones(20, 4), dim=1)
    s, i = exact_topk(c[:2], c, 5, chunk_size=3)
    assert i.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_select_topk_keeps_lowest_indices_on_ties():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    s, i = select_topk(scores, torch.arange(5)[None], 3)
    assert i.tolist() == [[1, 0, 2]]
    assert s[0].tolist() == pytest.approx([0.9, 0.5, 0.5])


def test_local_equals_global_when_each_list_is_the_whole_corpus():
    q, c = unit(6, 16, 3), tied_corpus()
    everything = [list(range(len(c)))[::-1] for _ in range(len(q))]  # list order must not matter
    local = rank_local(q, c, everything, k=10)
    s, i = rank_global(q, c, 10)
    for row, (ls, li) in enumerate(local):
        assert torch.equal(li, i[row])
        torch.testing.assert_close(ls, s[row])


def test_local_ranks_only_its_own_candidates_and_counts_repeats_once():
    q, c = unit(1, 8, 4), unit(10, 8, 5)
    ((s, i),) = rank_local(q, c, [[7, 2, 7, 9]])
    assert sorted(i.tolist()) == [2, 7, 9]
    ref = (c[[2, 7, 9]] @ q[0]).sort(descending=True).values
    torch.testing.assert_close(s, ref)


def test_faiss_flat_matches_exact():
    pytest.importorskip("faiss")
    q, c = unit(30, 32, 6), unit(500, 32, 7)
    s_exact, i_exact = rank_global(q, c, 10)
    s_flat, i_flat = rank_global(q, c, 10, backend="faiss_flat")
    assert torch.equal(i_flat, i_exact)
    torch.testing.assert_close(s_flat, s_exact, atol=1e-5, rtol=0)


def test_faiss_flat_breaks_ties_like_exact():
    pytest.importorskip("faiss")
    q, c = unit(5, 16, 8), tied_corpus()
    _, i_exact = rank_global(q, c, 4)
    _, i_flat = rank_global(q, c, 4, backend="faiss_flat")
    assert torch.equal(i_flat, i_exact)


@pytest.mark.parametrize("backend,options", [("faiss_ivf", {"nlist": 8, "nprobe": 8}), ("faiss_hnsw", {})])
def test_approximate_indexes_find_the_true_neighbours(backend, options):
    pytest.importorskip("faiss")
    q, c = unit(20, 16, 9), unit(400, 16, 10)
    _, i_exact = rank_global(q, c, 5)
    _, i_approx = rank_global(q, c, 5, backend=backend, **options)
    recall = sum(len(set(a) & set(b)) for a, b in zip(i_exact.tolist(), i_approx.tolist())) / i_exact.numel()
    assert recall >= 0.95  # nprobe = nlist makes IVF exhaustive; HNSW on 400 points is near exact


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown search backend"):
        rank_global(unit(1, 4, 0), unit(3, 4, 0), 2, backend="annoy")
