"""Ranking candidates by cosine similarity (embeddings are unit norm, so a dot product).

- ``rank_local``: each query against its own list of candidates (MMEB's image tasks).
- ``rank_global``: each query against the whole corpus: exact top-k by a matmul over corpus chunks
  (the Nq x Nc score matrix is never stored), or a FAISS index (flat, IVF or HNSW).

Ties are broken deterministically everywhere: equal scores rank by corpus position, lowest first.
Scores are accumulated in float64 and rounded to float32, so a pair's score does not depend on how
the corpus was chunked (float32 matmuls of different shapes differ in the last bits, which would
split exact duplicates); FAISS candidates are rescored the same way.
The evaluation orders its corpus by a hash of the candidate ids, so this order carries no hint of
which candidate is the positive (a model whose embeddings are all equal then scores at chance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

BACKENDS = ("exact", "faiss_flat", "faiss_ivf", "faiss_hnsw")


def dot(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``q @ c.T`` accumulated in float64, rounded to float32 (float32 products are exact in float64)."""
    return (q.double() @ c.double().T).float()


def order_rows(scores: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's (score, index) pairs sorted by score descending, then index ascending."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), indices.gather(1, by_score)


def select_topk(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best (score, index) pairs of each row, ties at the k-th score going to the lowest
    indices; sorted as :func:`order_rows`. ``indices`` must ascend along each row."""
    k = min(k, scores.shape[1])
    if k == 0:
        return scores[:, :0], indices[:, :0]
    kth = scores.topk(k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (tied.cumsum(dim=1) <= need))
    rows = scores.shape[0]
    picked_scores = scores[keep].view(rows, k)  # row-major: each row's picks in index order
    picked = indices[keep].view(rows, k)
    return order_rows(picked_scores, picked)


def exact_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    chunk_size: int = 65536,
    query_chunk_size: int = 1024,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [Nq, k], corpus indices [Nq, k]) of the best ``k`` by dot product, best first."""
    nq, nc = queries.shape[0], corpus.shape[0]
    k = min(k, nc)
    out_scores = torch.empty(nq, k, dtype=torch.float32)
    out_indices = torch.empty(nq, k, dtype=torch.long)
    blocks = math.ceil(nq / query_chunk_size) * math.ceil(nc / chunk_size)
    show = progress if progress is not None else blocks > 64
    with tqdm(total=blocks, desc="search", disable=not show, unit="block") as bar:
        for qs in range(0, nq, query_chunk_size):
            q = queries[qs : qs + query_chunk_size]
            best_s = q.new_empty(q.shape[0], 0, dtype=torch.float32)
            best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
            for cs in range(0, nc, chunk_size):
                block = dot(q, corpus[cs : cs + chunk_size])
                idx = torch.arange(cs, cs + block.shape[1], device=block.device).expand_as(block)
                s, i = select_topk(block, idx, k)
                # Earlier chunks hold lower indices: merge, back in index order, then reselect.
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                by_index = torch.argsort(i, dim=1, stable=True)
                best_s, best_i = select_topk(s.gather(1, by_index), i.gather(1, by_index), k)
                bar.update(1)
            out_scores[qs : qs + q.shape[0]] = best_s.cpu()
            out_indices[qs : qs + q.shape[0]] = best_i.cpu()
    return out_scores, out_indices


def faiss_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    index: str = "faiss_flat",
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by inner product through a FAISS index built over ``corpus`` (float32 on CPU).

    ``faiss_flat`` is exact; ``faiss_ivf`` (``nlist`` lists, default sqrt(Nc), trained on 40 points per
    list, ``nprobe`` searched)
    and ``faiss_hnsw`` (``hnsw_m`` links, ``ef_search``) are approximate. A few more than ``k`` are
    fetched so ties at the k-th score are broken as :func:`select_topk` does."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "FAISS search needs the faiss package: pip install 'tte_fast[faiss]' (or faiss-gpu)"
        ) from None
    c = corpus.detach().float().cpu().contiguous().numpy()
    q = queries.detach().float().cpu().contiguous().numpy()
    nc, dim = c.shape
    k = min(k, nc)
    if index == "faiss_flat":
        idx = faiss.IndexFlatIP(dim)
    elif index == "faiss_ivf":
        lists = nlist or max(1, min(nc // 39, int(math.sqrt(nc))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = seed
        sample = np.random.default_rng(seed).permutation(nc)[: 40 * lists]  # k-means on a sample
        idx.train(c[np.sort(sample)])
        idx.nprobe = min(nprobe, lists)
    elif index == "faiss_hnsw":
        idx = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = max(ef_search, k)
    else:
        raise ValueError(f"unknown FAISS index {index!r}; expected one of {BACKENDS[1:]}")
    idx.add(c)
    fetch = min(nc, k + 16)
    _, indices = idx.search(q, fetch)
    indices = torch.from_numpy(indices).long()
    found = indices >= 0  # approximate indexes may return fewer than asked (-1 padded)
    # Rescore the candidates as exact search does, so both break ties alike.
    corpus_cpu, queries_cpu = corpus.detach().float().cpu(), queries.detach().float().cpu()
    scores = torch.empty(indices.shape, dtype=torch.float32)
    for start in range(0, indices.shape[0], 256):
        rows = corpus_cpu[indices[start : start + 256].clamp(min=0)].double()
        part = torch.einsum("qd,qkd->qk", queries_cpu[start : start + 256].double(), rows)
        scores[start : start + 256] = part.float()
    scores = torch.where(found, scores, torch.full_like(scores, -math.inf))
    indices = torch.where(found, indices, torch.full_like(indices, nc))  # sorts last on ties
    by_index = torch.argsort(indices, dim=1, stable=True)
    s, i = select_topk(scores.gather(1, by_index), indices.gather(1, by_index), k)
    return s, torch.where(i >= nc, torch.full_like(i, -1), i)


def rank_global(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, backend: str = "exact", **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, corpus indices) [Nq, min(k, Nc)], best first; index -1 marks a slot an approximate
    index could not fill."""
    if backend == "exact":
        return exact_topk(queries, corpus, k, **options)
    if backend in BACKENDS:
        return faiss_topk(queries, corpus, k, index=backend, **options)
    raise ValueError(f"unknown search backend {backend!r}; expected one of {BACKENDS}")


def rank_local(
    queries: torch.Tensor, corpus: torch.Tensor, lists: Sequence[Sequence[int]], k: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per query, its own candidates (corpus indices, a repeated one counted once) ranked by score,
    best first, ties by corpus index: a list of (scores, corpus indices), cut to ``k`` if given."""
    out = []
    for qi, candidates in enumerate(lists):
        idx = torch.tensor(sorted(set(candidates)), dtype=torch.long)
        scores = dot(queries[qi : qi + 1], corpus[idx])
        s, i = select_topk(scores, idx[None], len(idx) if k is None else k)
        out.append((s[0], i[0]))
    return out
