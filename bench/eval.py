"""Benchmark the evaluation pipeline (tte_fast.eval).

1. Encoding throughput on a tiny Qwen2-VL (random weights): queries/s (thinking, ``--think-tokens``)
   and candidates/s (one prefill), caches off.
2. A whole evaluation (one global task of ``--queries`` queries over ``--candidates`` candidates,
   half with images) run three times: cold; unchanged (goal: under 5% of the cold run's time); and
   with a changed embedder over the same reasoner (a TwoModelTTE: the cached query traces are reused,
   the reasoner thinks no more).
3. Global search time against corpus size (random unit vectors, ``--dim``, ``--search-queries``
   queries, top 10): exact chunked matmul (float64 accumulation), and FAISS flat and IVF (build +
   search). Median of ``--repeats``.

    python bench/eval.py                                # quick CPU run (corpora 10k and 100k)
    python bench/eval.py --sizes 10000,100000,1000000   # the 1M point needs ~7 GB of memory
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from tte_fast.eval import evaluate, parse_config
from tte_fast.eval.encoder import ModelRunner
from tte_fast.eval.search import rank_global

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(p, repeats=3, devices=["cpu", "cuda"], dtype_flag=False)
    p.add_argument("--model", default=None, help="checkpoint (default: a tiny random Qwen2-VL)")
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--think-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sizes", default="10000,100000", help="corpus sizes of the search table ('' skips it)")
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--search-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def write_task(folder: str, n_queries: int, n_candidates: int) -> dict:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "set", "img"), exist_ok=True)
    corpus, queries, qrels = [], [], []
    for i in range(n_candidates):
        row = {"id": f"d{i}", "text": f"candidate number {i} about topic {i % 7}"}
        if i % 2:
            path = os.path.join("img", f"{i}.png")
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
                os.path.join(folder, "set", path)
            )
            row["image"] = path
        corpus.append(row)
    for i in range(n_queries):
        queries.append({"id": f"q{i}", "text": f"find something about topic {i % 7}, item {i}"})
        qrels.append({"query_id": f"q{i}", "corpus_id": f"d{i % n_candidates}", "relevance": 1})
    for name, rows in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        with open(os.path.join(folder, "set", f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return {"tasks": [{"name": "bench", "dataset_parser": "tte", "data_path": "set", "eval_type": "global"}]}


def load(path: str, device: str):
    from tte_fast import UnifiedTTE

    return UnifiedTTE.from_pretrained(path, device=device)


def pipeline_numbers(args, tmp: str) -> tuple[list, dict]:
    from tte_fast import TwoModelTTE
    from tte_fast.testing import build_tiny_checkpoint

    path = args.model or build_tiny_checkpoint("qwen2_vl", os.path.join(tmp, "tiny"))
    model = load(path, args.device)
    raw = write_task(os.path.join(tmp, "data"), args.queries, args.candidates)
    raw["encode"] = {"batch_size": args.batch_size, "max_think_tokens": args.think_tokens, "progress": False}
    config = parse_config(copy.deepcopy(raw), base_dir=os.path.join(tmp, "data"))

    # 1. throughput, caches off
    from tte_fast.eval.data import read_task

    data = read_task(config.tasks[0], config.base_dir)
    runner = ModelRunner(model, config.encode, None)
    runner.encode("bench", "query", data.queries[:4], data.query_ids[:4])  # warm-up
    t_q, _ = harness.timed(lambda: runner.encode("bench", "query", data.queries, data.query_ids), args.device)
    t_c, _ = harness.timed(
        lambda: runner.encode("bench", "target", data.corpus, data.corpus_ids), args.device
    )

    # 2. whole evaluation: cold, unchanged, changed embedder over the same reasoner
    def run(m, out):
        c = parse_config(copy.deepcopy(raw) | {"output_dir": out}, base_dir=os.path.join(tmp, "data"))
        return harness.timed(lambda: evaluate(c, model=m, verbose=False), args.device)

    reasoner, embedder = load(path, args.device), load(path, args.device)
    pair_out = os.path.join(tmp, "pair")
    cold, _ = run(TwoModelTTE(reasoner, embedder), pair_out)
    warm, second = run(TwoModelTTE(reasoner, embedder), pair_out)
    with torch.no_grad():
        next(embedder.hf_model.parameters()).view(-1)[0] += 1e-2
    changed, third = run(TwoModelTTE(reasoner, embedder), pair_out)
    rows = [
        ["cold", f"{cold.wall_s:.2f}", "100.0", "-"],
        [
            "unchanged re-run",
            f"{warm.wall_s:.2f}",
            f"{100 * warm.wall_s / cold.wall_s:.1f}",
            str(second["tasks"]["bench"]["encode"]["query"]["cached"]) + " cached",
        ],
        [
            "changed embedder",
            f"{changed.wall_s:.2f}",
            f"{100 * changed.wall_s / cold.wall_s:.1f}",
            str(third["tasks"]["bench"]["encode"]["query"]["reused_traces"]) + " traces reused",
        ],
    ]
    numbers = {
        "queries_per_s": args.queries / t_q.wall_s,
        "candidates_per_s": args.candidates / t_c.wall_s,
        "cold_s": cold.wall_s,
        "unchanged_s": warm.wall_s,
        "unchanged_fraction": warm.wall_s / cold.wall_s,
        "changed_embedder_s": changed.wall_s,
        "changed_embedder_query_encode": third["tasks"]["bench"]["encode"]["query"],
    }
    return rows, numbers


def search_numbers(args) -> tuple[list, list]:
    rows, points = [], []
    g = torch.Generator().manual_seed(0)
    for size in [int(s) for s in args.sizes.split(",") if s]:
        corpus = torch.nn.functional.normalize(torch.randn(size, args.dim, generator=g), dim=1)
        queries = torch.nn.functional.normalize(
            torch.randn(args.search_queries, args.dim, generator=g), dim=1
        )
        point = {"corpus": size}
        for backend, options in (("exact", {}), ("faiss_flat", {}), ("faiss_ivf", {"nprobe": 16})):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _, found = rank_global(queries, corpus, 10, backend, **options)
                times.append(time.perf_counter() - start)
            point[backend] = float(np.median(times))
            if backend == "exact":
                exact = found
            else:
                hits = sum(len(set(a) & set(b)) for a, b in zip(exact.tolist(), found.tolist()))
                point[f"{backend}_recall@10"] = hits / exact.numel()
        points.append(point)
        rows.append(
            [
                f"{size:,}",
                f"{point['exact']:.3f}",
                f"{point['faiss_flat']:.3f}",
                f"{point['faiss_ivf']:.3f}",
                f"{point['faiss_ivf_recall@10']:.3f}",
            ]
        )
        del corpus
    return rows, points


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows, numbers = pipeline_numbers(args, tmp)
    print(
        f"\ntiny Qwen2-VL, {args.queries} queries (thinking {args.think_tokens} tokens), "
        f"{args.candidates} candidates (half with images), batch {args.batch_size}:"
    )
    print(f"queries/s {numbers['queries_per_s']:.1f}   candidates/s {numbers['candidates_per_s']:.1f}")
    harness.print_table(
        ["evaluation (TwoModelTTE)", "seconds", "% of cold", "queries"],
        rows,
        title="whole evaluation, three runs over one cache",
    )
    search_rows, points = search_numbers(args)
    if search_rows:
        harness.print_table(
            ["corpus", "exact s", "faiss flat s", "faiss ivf s", "ivf recall@10"],
            search_rows,
            title=f"global search: {args.search_queries} queries, D={args.dim}, top 10 (build + search)",
        )
    harness.save_report(args, {"pipeline": numbers, "search": points})


if __name__ == "__main__":
    main()
