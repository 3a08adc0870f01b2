"""Benchmark the cached contrastive step (tte_fast.gradcache) on a small transformer encoder.

Three ways to take one InfoNCE training step (queries and as many targets, in-batch negatives):

- ``plain``: full-batch autograd, both sides encoded with graphs, ``infonce_loss(...).backward()``;
- ``gradcache``: ``gradcache_step`` with ``--chunk`` samples per chunk;
- ``st_cached``: sentence-transformers' ``CachedMultipleNegativesRankingLoss`` (the peer) with the
  same mini-batch size, scale = 1 / temperature, on a SentenceTransformer holding the same weights.

The encoder is a randomly initialised BERT (``--layers``, ``--hidden``) with mean pooling over
``--seq-len`` tokens (random lengths, right padding), embeddings L2-normalised. Reported:

1. peak memory of one step per batch size, each point in a fresh process: on CPU, peak RSS above
   the process before the step (glibc's mmap threshold set to 64 KiB, so freed blocks leave RSS);
   on CUDA, ``torch.cuda.max_memory_allocated``. ``total`` includes the model and the inputs,
   ``step`` only the step's own growth (gradients, activations, cached embeddings);
2. step time at ``--time-batch`` (median of ``--repeats``, interleaved), as a ratio to ``plain``;
3. a check that the three compute the same loss (dropout off).

    python bench/gradcache.py                                  # quick CPU run
    python bench/gradcache.py --batches 16,64,256,1024         # the sizes of the memory goal
    python bench/gradcache.py --device cuda --autocast bf16 --layers 6 --hidden 512 --seq-len 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from tte_fast.gradcache import gradcache_step
from tte_fast.kernels import infonce_loss

# harness.py lies beside this file; found also when this file is loaded by path (tests). Appended,
# so that bench/ shadows no other module.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

METHODS = ("plain", "gradcache", "st_cached")
TEMPERATURE = 0.05  # CachedMultipleNegativesRankingLoss's default scale of 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(p, repeats=5, devices=["cpu", "cuda"], dtype_flag=False, point=True)
    p.add_argument(
        "--autocast", default="none", choices=["none", "bf16"], help="torch.autocast around every step"
    )
    p.add_argument(
        "--batches", default="16,64,256", help="comma-separated batch sizes of the memory table ('' skips it)"
    )
    p.add_argument("--chunk", type=int, default=16, help="GradCache chunk / peer mini-batch size")
    p.add_argument("--time-batch", type=int, default=64, help="batch of the timing table (plain must fit)")
    p.add_argument("--plain-max", type=int, default=256, help="largest batch at which plain autograd is run")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 keeps shared CPU machines from thrashing)",
    )
    p.add_argument("--methods", default=",".join(METHODS))
    return p.parse_args(argv)


class MeanPoolEncoder(nn.Module):
    """BERT, attention-masked mean pooling, L2 normalisation: the encoder ``gradcache_step`` calls."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1), dim=-1)


def save_random_bert(args, folder: str) -> str:
    """A random-weight BERT checkpoint (and a made-up word-piece vocab) that both encoders load."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.seq_len),
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    vocab = os.path.join(folder, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write(
            "\n".join(
                ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(args.vocab - 5)]
            )
        )
    BertTokenizerFast(vocab_file=vocab).save_pretrained(folder)
    return folder


def load_encoder(method: str, folder: str, args):
    """The callable a step runs: MeanPoolEncoder for ours, a SentenceTransformer for the peer."""
    if method == "st_cached":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        transformer = Transformer(folder, max_seq_length=args.seq_len)
        pooling = Pooling(transformer.get_embedding_dimension(), "mean")
        return SentenceTransformer(modules=[transformer, pooling], device=args.device).train()
    from transformers import BertModel

    return MeanPoolEncoder(BertModel.from_pretrained(folder)).to(args.device).train()


def make_batch(n: int, args, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, args.vocab, (n, args.seq_len), generator=g)
    lengths = torch.randint(args.seq_len // 2, args.seq_len + 1, (n,), generator=g)
    mask = (torch.arange(args.seq_len) < lengths[:, None]).long()
    ids[:, 0] = 2  # [CLS]
    return {"input_ids": (ids * mask).to(args.device), "attention_mask": mask.to(args.device)}


def make_step(method: str, encoder, args):
    """A function running one training step (forward + backward) on (queries, targets)."""
    if method == "plain":

        def step(queries, targets):
            loss = infonce_loss(encoder(**queries), encoder(**targets), TEMPERATURE)
            loss.backward()
            return loss.detach()

    elif method == "gradcache":

        def step(queries, targets):
            return gradcache_step(encoder, queries, targets, chunk_size=args.chunk, temperature=TEMPERATURE)

    elif method == "st_cached":
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

        peer = CachedMultipleNegativesRankingLoss(encoder, scale=1 / TEMPERATURE, mini_batch_size=args.chunk)

        def step(queries, targets):
            loss = peer([queries, targets], None)
            loss.backward()
            return loss.detach()

    elif method == "forward":  # timing reference only: both sides, no graph, dropout on

        def step(queries, targets):
            with torch.no_grad():
                encoder(**queries), encoder(**targets)

    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.autocast == "bf16" else None

    def run(queries, targets):
        encoder.zero_grad(set_to_none=True)
        with autocast or contextlib.nullcontext():
            return step(queries, targets)

    return run


def measure_point(args) -> dict:
    """Run in a fresh process: memory of one step of ``point["method"]`` at ``point["batch"]``."""
    method, batch = args.point["method"], args.point["batch"]
    with tempfile.TemporaryDirectory() as folder:
        encoder = load_encoder(method, save_random_bert(args, folder), args)
    step = make_step(method, encoder, args)
    queries, targets = make_batch(batch, args, 1), make_batch(batch, args, 2)
    peak = harness.measure_peak(lambda: step(queries, targets), args.device)
    return {"total_bytes": peak.peak_bytes, "step_bytes": peak.growth_bytes}


def memory_table(args, methods, batches) -> list[dict]:
    # On CPU, glibc keeps freed heap blocks mapped, so peak RSS would also count fragmentation that
    # grows with the number of chunk-sized alloc/free cycles; serving blocks of 64 KiB and more from
    # mmap returns them on free and makes peak RSS track the live tensors (the same for every method).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    flags = harness.forward_flags(
        args, "device", "autocast", "chunk", "seq_len", "hidden", "layers", "vocab", "threads"
    )
    rows = []
    for batch in batches:
        for method in methods:
            if method == "plain" and batch > args.plain_max:
                continue
            point = {"method": method, "batch": batch}
            try:
                rows.append({**point, **harness.run_point(__file__, point, flags, env=env)})
            except harness.PointFailed as failure:
                print(failure, file=sys.stderr)
    return rows


def time_and_check(args, methods) -> tuple[list[dict], dict]:
    with tempfile.TemporaryDirectory() as folder:
        save_random_bert(args, folder)
        encoders = {m: load_encoder(m, folder, args) for m in methods}
    steps = {m: make_step(m, encoders[m], args) for m in methods}
    queries, targets = make_batch(args.time_batch, args, 1), make_batch(args.time_batch, args, 2)

    # Same workload: with dropout off every method computes the same loss on the same weights.
    for encoder in encoders.values():
        encoder.eval()
    losses = {m: float(steps[m](queries, targets)) for m in methods}
    for encoder in encoders.values():
        encoder.train()

    # The floor of any recomputing step: plain autograd plus one more forward without a graph.
    if "plain" in methods:
        methods = [*methods, "forward"]
        steps["forward"] = make_step("forward", encoders["plain"], args)

    # Wall time, and on CPU also this process's CPU time: on a shared machine the latter is the
    # steadier measure of a single-threaded step.
    fns = {m: (lambda m=m: steps[m](queries, targets)) for m in methods}
    times = harness.median_times(fns, args.device, args.repeats)
    rows = []
    for m in methods:
        row = {"method": m, "batch": args.time_batch, "median_s": times[m].wall_s}
        if args.device == "cpu":
            row["median_cpu_s"] = times[m].cpu_s
        rows.append(row)
    base = next((r for r in rows if r["method"] == "plain"), None)
    for r in rows:
        r["ratio"] = r["median_s"] / base["median_s"] if base else None
        if base and "median_cpu_s" in r:
            r["cpu_ratio"] = r["median_cpu_s"] / base["median_cpu_s"]
    return rows, losses


def print_memory(memory: list[dict], batches: list[int], args) -> None:
    mib = 1 << 20
    first = {r["method"]: r["step_bytes"] for r in memory if r["batch"] == batches[0]}
    rows = []
    for r in memory:
        ratio = r["step_bytes"] / first[r["method"]] if first.get(r["method"]) else float("nan")
        rows.append((r["method"], r["batch"], f"{r['total_bytes'] / mib:.1f}", f"{r['step_bytes'] / mib:.1f}",
                     f"{ratio:.2f}"))  # fmt: skip
    harness.print_table(
        ("method", "batch", "total MiB", "step MiB", f"step / step@{batches[0]}"),
        rows,
        title=(
            f"peak memory of one step (chunk {args.chunk}, {args.layers}x{args.hidden} BERT, "
            f"seq {args.seq_len}, {args.device}, autocast {args.autocast}); fresh process per point"
        ),
    )


def print_timing(timing: list[dict], losses: dict, args) -> None:
    rows = []
    for r in timing:
        rows.append((
            r["method"],
            f"{r['median_s'] * 1e3:.1f}",
            f"{r['ratio']:.2f}" if r["ratio"] is not None else "-",
            f"{r['median_cpu_s'] * 1e3:.1f}" if "median_cpu_s" in r else "-",
            f"{r['cpu_ratio']:.2f}" if "cpu_ratio" in r else "-",
            f"{losses[r['method']]:.6f}" if r["method"] in losses else "-",
        ))  # fmt: skip
    harness.print_table(
        ("method", "wall ms", "ratio", "cpu ms", "ratio", "loss (dropout off)"),
        rows,
        title=f"step time at batch {args.time_batch} (median of {args.repeats}, ratio to plain autograd)",
    )
    spread = max(losses.values()) - min(losses.values())
    print(f"largest loss difference between methods: {spread:.2e}")
    forward = next((r for r in timing if r["method"] == "forward"), None)
    if forward:
        key = "cpu_ratio" if "cpu_ratio" in forward else "ratio"
        print(
            f"recomputation floor (plain + one forward without graph): {1 + forward[key]:.2f}x plain ({key})"
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.point:
        harness.emit_point(measure_point(args))
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; expected some of {METHODS}")
    if "st_cached" in methods:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            print("sentence-transformers is not installed: the peer column is skipped", file=sys.stderr)
            methods.remove("st_cached")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    memory = memory_table(args, methods, batches) if batches else []
    if memory:
        print_memory(memory, batches, args)
    timing, losses = time_and_check(args, methods)
    print_timing(timing, losses, args)
    harness.save_report(args, {"memory": memory, "timing": timing, "losses": losses})


if __name__ == "__main__":
    main()
