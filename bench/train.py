"""Benchmark the training jobs' steps on a tiny random-weight Qwen2-VL (tte_fast.train).

1. **Embedder** (LoRA r16, queries with an image each, one text target each): the job's own
   GradCache step (``--chunk`` samples per chunk) against plain full-batch autograd (the same
   embedder module, ``infonce_loss(...).backward()``) at the batches of ``--batches``; plain runs up
   to ``--plain-max``. Each point runs in a fresh process: peak memory of one step (peak RSS on CPU,
   ``max_memory_allocated`` on CUDA) and samples/s (median of ``--repeats`` steps after a warm-up).
   Goals: peak at the largest batch within 1.3x of the peak at the smallest; samples/s within 1.5x
   of plain autograd's at a batch both fit.
2. **Reasoner SFT** (full fine-tuning, fp32 or ``--dtype``): tokens/s of our step (loss on the
   labelled tokens only, AdamW, clipping) against transformers' ``Trainer`` on the same model, the
   same pre-tokenized batches, batch size and precision. Goal: at least equal.

    python bench/train.py                                   # quick CPU run
    python bench/train.py --batches 64,256,1024 --plain-max 256
    python bench/train.py --device cuda --dtype bfloat16 --batches 64,256,1024 --plain-max 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MIB = 1 << 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(p, repeats=3, devices=["cpu", "cuda"], point=True)
    p.add_argument("--batches", default="64,256", help="embedder global batches ('' skips the embedder)")
    p.add_argument("--plain-max", type=int, default=256, help="largest batch plain autograd runs at")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--sft-batch", type=int, default=8, help="reasoner batch ('0' skips the reasoner)")
    p.add_argument("--sft-steps", type=int, default=6, help="timed reasoner steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--model", help=argparse.SUPPRESS)  # set for the fresh processes
    return p.parse_args(argv)


def images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)) for _ in range(n)]


def setup(args, job: str, lora: bool):
    """The job's trainable model, step function and renderer, built as ``tte-fast train`` builds them."""
    from accelerate import Accelerator

    from tte_fast.train.batches import Renderer
    from tte_fast.train.config import parse_config
    from tte_fast.train.jobs import build_job
    from tte_fast.train.models import load_for_training, make_trainable

    config = parse_config(
        {
            "job": job,
            "model": args.model,
            "output_dir": "unused",
            "model_dtype": "float32" if args.dtype == "float32" else args.dtype,
            "data": {"datasets": [{"path": "unused"}]},
            "lora": {"enabled": lora},
            "contrastive": {"chunk_size": args.chunk},
        }
    )
    loaded = load_for_training(config)
    make_trainable(loaded, config)
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="no")
    job_ = build_job(config, loaded, accelerator)
    module = job_.module.to(accelerator.device).train()
    tte = loaded.tte_config
    embed_id = tte.resolve_embed_token(loaded.processor.tokenizer)[1]
    renderer = Renderer(loaded.processor, True, tte.prompts, embed_id, tte.think_end_token)
    return job_, module, renderer


def embedder_point(args) -> dict:
    """Fresh process: peak memory and samples/s of one embedder step at ``batch``."""
    from tte_fast.inputs import EmbedInput
    from tte_fast.kernels import infonce_loss
    from tte_fast.train.jobs import to_device

    method, n = args.point["method"], args.point["batch"]
    job, module, renderer = setup(args, "embedder", lora=True)
    queries = [
        EmbedInput(text=f"query {i} about this picture", image=im) for i, im in enumerate(images(n, 0))
    ]
    targets = [EmbedInput(text=f"a caption number {i} of a random picture") for i in range(n)]
    batch = {"queries": renderer.contrastive_batch(queries, "query", [None] * n)}
    batch["targets"] = renderer.contrastive_batch(targets, "target", [None] * n)
    device, dtype = torch.device(args.device), next(module.parameters()).dtype

    def step():
        module.zero_grad(set_to_none=True)
        if method == "gradcache":
            return job.step(module, batch)
        q = module(**to_device(batch["queries"], device, dtype))
        loss = infonce_loss(q, module(**to_device(batch["targets"], device, dtype)), 0.02)
        loss.backward()
        return loss

    peak = harness.measure_peak(step, args.device)
    seconds = harness.median_seconds(step, args.device, args.repeats, warmup=0)
    return {"peak_bytes": peak.peak_bytes, "samples_per_s": n / seconds}


def sft_batches(renderer, batch: int, steps: int) -> list[dict]:
    from tte_fast.inputs import EmbedInput

    out = []
    for s in range(steps):
        items = [
            EmbedInput(text=f"what is in picture {s}.{i}?", image=im) for i, im in enumerate(images(batch, s))
        ]
        traces = [
            f"step {s} sample {i}: " + "the picture shows random coloured noise " * 3 for i in range(batch)
        ]
        out.append(renderer.sft_batch(items, traces, ["noise"] * batch))
    return out


def reasoner_point(args) -> dict:
    """Fresh process: tokens/s of our reasoner step or of transformers' Trainer on the same batches."""
    method = args.point["method"]
    job, module, renderer = setup(args, "reasoner", lora=False)
    batches = sft_batches(renderer, args.sft_batch, args.sft_steps + 2)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    times = (_ours if method == "ours" else _trainer)(args, job, module, batches)[2:]
    return {"tokens_per_s": statistics.median(t / s for t, s in zip(tokens[2:], times))}


def _ours(args, job, module, batches) -> list[float]:
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for batch in batches:
        start = time.perf_counter()
        job.step(module, {"inputs": batch})
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        harness.sync(args.device)
        times.append(time.perf_counter() - start)
    return times


def _trainer(args, job, module, batches) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    times, marks = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks["start"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            harness.sync(args.device)
            times.append(time.perf_counter() - marks["start"])

    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=1,
            max_steps=len(batches),
            learning_rate=1e-5,
            max_grad_norm=1.0,
            lr_scheduler_type="constant",
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            use_cpu=args.device == "cpu",
            dataloader_num_workers=0,
            bf16=args.dtype == "bfloat16",
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=module.model,
            args=training,
            train_dataset=list(range(len(batches))),
            data_collator=lambda indices: batches[indices[0]],
            callbacks=[Clock()],
        )
        trainer.train()
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.point is not None:
        run = embedder_point if args.point["job"] == "embedder" else reasoner_point
        harness.emit_point(run(args))
        return
    from tte_fast.testing import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        args.model = build_tiny_checkpoint("qwen2_vl", os.path.join(folder, "tiny"))
        flags = harness.forward_flags(
            args, "device", "dtype", "repeats", "chunk", "sft_batch", "sft_steps", "threads", "model"
        )
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # peak RSS tracks live tensors
        report = {"embedder": [], "reasoner": []}
        for n in [int(b) for b in args.batches.split(",") if b]:
            for method in ("gradcache", "plain"):
                if method == "plain" and n > args.plain_max:
                    continue
                point = {"job": "embedder", "method": method, "batch": n}
                report["embedder"].append({**point, **harness.run_point(__file__, point, flags, env=env)})
        if args.sft_batch:
            for method in ("ours", "trainer"):
                point = {"job": "reasoner", "method": method}
                report["reasoner"].append({**point, **harness.run_point(__file__, point, flags, env=env)})
    print_report(report)
    harness.save_report(args, report)


def print_report(report: dict) -> None:
    rows = report["embedder"]
    if rows:
        first = next(r["peak_bytes"] for r in rows if r["method"] == "gradcache")
        plain = {r["batch"]: r["samples_per_s"] for r in rows if r["method"] == "plain"}
        harness.print_table(
            ["method", "batch", "peak MiB", "peak / first", "samples/s", "vs plain"],
            [
                [
                    r["method"],
                    r["batch"],
                    f"{r['peak_bytes'] / MIB:.0f}",
                    f"{r['peak_bytes'] / first:.2f}" if r["method"] == "gradcache" else "",
                    f"{r['samples_per_s']:.1f}",
                    f"{r['samples_per_s'] / plain[r['batch']]:.2f}" if r["batch"] in plain else "",
                ]
                for r in rows
            ],
            title="embedder step (tiny Qwen2-VL, LoRA, an image per query)",
        )
    rows = report["reasoner"]
    if rows:
        trainer = next(r["tokens_per_s"] for r in rows if r["method"] == "trainer")
        harness.print_table(
            ["method", "tokens/s", "vs Trainer"],
            [[r["method"], f"{r['tokens_per_s']:.0f}", f"{r['tokens_per_s'] / trainer:.2f}"] for r in rows],
            title="reasoner SFT step (tiny Qwen2-VL, full fine-tuning)",
        )


if __name__ == "__main__":
    main()
