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
    python bench/gradcache.py --batches 16,64,256,1024         # the issue's memory sizes
    python bench/gradcache.py --device cuda --autocast bf16 --layers 6 --hidden 512 --seq-len 128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from tte_fast.gradcache import gradcache_step
from tte_fast.kernels import infonce_loss

METHODS = ("plain", "gradcache", "st_cached")
TEMPERATURE = 0.05  # CachedMultipleNegativesRankingLoss's default scale of 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--autocast", default="none", choices=["none", "bf16"], help="torch.autocast around every step"
    )
    p.add_argument(
        "--batches", default="16,64,256", help="comma-separated batch sizes of the memory table ('' skips it)"
    )
    p.add_argument("--chunk", type=int, default=16, help="GradCache chunk / peer mini-batch size")
    p.add_argument("--time-batch", type=int, default=64, help="batch of the timing table (plain must fit)")
    p.add_argument("--plain-max", type=int, default=256, help="largest batch at which plain autograd is run")
    p.add_argument("--repeats", type=int, default=5)
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
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one memory point
    p.add_argument("--point-batch", type=int, help=argparse.SUPPRESS)
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


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the RSS high-water mark (Linux >= 4.0) so that set-up does not count."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_point(args) -> dict:
    """Run in a fresh process: memory of one step of ``args.point`` at ``args.point_batch``."""
    with tempfile.TemporaryDirectory() as folder:
        encoder = load_encoder(args.point, save_random_bert(args, folder), args)
    step = make_step(args.point, encoder, args)
    queries, targets = make_batch(args.point_batch, args, 1), make_batch(args.point_batch, args, 2)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(queries, targets)
        sync(args.device)
        peak = torch.cuda.max_memory_allocated()
        return {"total_bytes": peak, "step_bytes": peak - base}
    base = current_rss()
    reset_peak_rss()
    step(queries, targets)
    peak = peak_rss()
    return {"total_bytes": peak, "step_bytes": peak - base}


def forwarded_flags(args) -> list[str]:
    flags = ["--device", args.device, "--autocast", args.autocast, "--chunk", str(args.chunk)]
    for name in ("seq_len", "hidden", "layers", "vocab", "threads"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags


def memory_table(args, methods, batches) -> list[dict]:
    # On CPU, glibc keeps freed heap blocks mapped, so peak RSS would also count fragmentation that
    # grows with the number of chunk-sized alloc/free cycles; serving blocks of 64 KiB and more from
    # mmap returns them on free and makes peak RSS track the live tensors (the same for every method).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for batch in batches:
        for method in methods:
            if method == "plain" and batch > args.plain_max:
                continue
            cmd = [
                sys.executable,
                __file__,
                "--point",
                method,
                "--point-batch",
                str(batch),
                *forwarded_flags(args),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"memory point {method} @ {batch} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append({"method": method, "batch": batch, **json.loads(out.stdout.strip().splitlines()[-1])})
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
    wall, cpu = {m: [] for m in methods}, {m: [] for m in methods}
    for m in methods:
        steps[m](queries, targets)  # warm-up
    for _ in range(args.repeats):
        for m in methods:
            sync(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[m](queries, targets)
            sync(args.device)
            wall[m].append(time.perf_counter() - start)
            cpu[m].append(time.process_time() - start_cpu)
    rows = []
    for m in methods:
        row = {"method": m, "batch": args.time_batch, "median_s": statistics.median(wall[m])}
        if args.device == "cpu":
            row["median_cpu_s"] = statistics.median(cpu[m])
        rows.append(row)
    base = next((r for r in rows if r["method"] == "plain"), None)
    for r in rows:
        r["ratio"] = r["median_s"] / base["median_s"] if base else None
        if base and "median_cpu_s" in r:
            r["cpu_ratio"] = r["median_cpu_s"] / base["median_cpu_s"]
    return rows, losses


def print_memory(memory: list[dict], batches: list[int], args) -> None:
    mib = 1 << 20
    print(
        f"\npeak memory of one step (chunk {args.chunk}, {args.layers}x{args.hidden} BERT, "
        f"seq {args.seq_len}, "
        f"{args.device}, autocast {args.autocast}); fresh process per point"
    )
    print(
        f"{'method':<11}{'batch':>7}{'total MiB':>11}{'step MiB':>10}{'step / step@' + str(batches[0]):>16}"
    )
    first = {r["method"]: r["step_bytes"] for r in memory if r["batch"] == batches[0]}
    for r in memory:
        ratio = r["step_bytes"] / first[r["method"]] if first.get(r["method"]) else float("nan")
        total, step = r["total_bytes"] / mib, r["step_bytes"] / mib
        print(f"{r['method']:<11}{r['batch']:>7}{total:>11.1f}{step:>10.1f}{ratio:>16.2f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.point:
        print(json.dumps(measure_point(args)))
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
    print(f"\nstep time at batch {args.time_batch} (median of {args.repeats}, ratio to plain autograd)")
    print(f"{'method':<11}{'wall ms':>9}{'ratio':>7}{'cpu ms':>9}{'ratio':>7}{'loss (dropout off)':>20}")
    for r in timing:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        cpu_ms = f"{r['median_cpu_s'] * 1e3:.1f}" if "median_cpu_s" in r else "-"
        cpu_ratio = f"{r['cpu_ratio']:.2f}" if "cpu_ratio" in r else "-"
        loss = f"{losses[r['method']]:.6f}" if r["method"] in losses else "-"
        print(f"{r['method']:<11}{r['median_s'] * 1e3:>9.1f}{ratio:>7}{cpu_ms:>9}{cpu_ratio:>7}{loss:>20}")
    spread = max(losses.values()) - min(losses.values())
    print(f"largest loss difference between methods: {spread:.2e}")
    forward = next((r for r in timing if r["method"] == "forward"), None)
    if forward:
        key = "cpu_ratio" if "cpu_ratio" in forward else "ratio"
        print(
            f"recomputation floor (plain + one forward without graph): {1 + forward[key]:.2f}x plain ({key})"
        )

    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("json", "point", "point_batch")}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "memory": memory, "timing": timing, "losses": losses}, f, indent=2)


if __name__ == "__main__":
    main()
