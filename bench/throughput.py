"""Thinking throughput over a corpus whose traces vary in length, as real traces do.

A corpus of ``--inputs`` queries (text, and images on Qwen-VL models) gets per-input think budgets
from a skewed spread: ``ceil(max * u**2)`` for uniform ``u``, so most traces are short, a few reach
the budget and the mean is about a third of it. Three paths think and embed every input at the same
batch / slot count:

1. ``hf``: HF ``generate`` in static batches (each batch runs to its longest budget), every row's
   trace cut to its own budget, then a re-encode of prompt + trace + embedding token;
2. ``static``: tte_fast's static batches (``scheduler="static"``), likewise run to each batch's
   longest budget, embedding from the generation cache;
3. ``continuous``: tte_fast's continuous-batching engine: every input stops at its own budget and a
   freed slot takes the next input at once.

Reported: inputs/s and useful generated tokens/s (each input's own budget), medians of
``--repeats`` runs, ratios against the static path. Outputs are checked: every path's traces equal
(greedy decoding is prefix-consistent), and the engine's embeddings equal tte_fast's static path run
with each input's own budget (on ``--check`` inputs). Random-weight models never stop early, so a
trace's length is its budget.

Goal on CPU: continuous >= 1.5x the static path's inputs/s, with identical outputs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from tte_fast import UnifiedTTE
from tte_fast.inputs import check_input, load_input
from tte_fast.prompting.prompts import render_prompt
from tte_fast.runtime.engine import Engine

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from latency import HFBaseline  # noqa: E402


def make_corpus(n: int, max_budget: int, vision: bool, seed: int = 0) -> tuple[list, list[int]]:
    """``n`` inputs (every third one with an image on Qwen-VL) and their skewed think budgets."""
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(n):
        text = f"Item {i}: a {['red', 'green', 'blue', 'grey'][i % 4]} object, seen {i % 7} times."
        if vision and i % 3 == 0:
            size = (64 + 16 * (i % 3), 64 + 16 * (i % 4), 3)
            inputs.append({"image": rng.integers(0, 256, size, dtype=np.uint8), "text": text})
        else:
            inputs.append(text)
    budgets = [max(1, math.ceil(max_budget * u**2)) for u in rng.random(n)]
    return inputs, budgets


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def run_static(tte: UnifiedTTE, inputs, budgets, batch_size) -> tuple[list[str], torch.Tensor]:
    """Static batches, each to its longest budget; traces cut to every input's own budget."""
    traces, embeddings = [], []
    for rows in batches(len(inputs), batch_size):
        budget = max(budgets[i] for i in rows)
        out = tte.encode(
            [inputs[i] for i in rows],
            think=True,
            max_think_tokens=budget,
            batch_size=len(rows),
            scheduler="static",
        )
        embeddings.append(out.embeddings)
        for i, seq in zip(rows, out.sequences):
            traces.append(_trace_tokens(tte, seq, budgets[i], inputs[i]))
    return traces, torch.cat(embeddings)


def _trace_tokens(tte, sequence, budget, raw) -> str:
    prompt = tte.batch_inputs(
        [load_input(0, check_input(0, raw))], [0], "query", True, None, tte.decode_options()
    )
    n_prompt = int(prompt["attention_mask"].sum())
    generated = sequence[n_prompt:-1][:budget]  # drop the embedding token, cut to the budget
    return tte.decode_traces([generated])[0]


def run_continuous(engine: Engine, tte: UnifiedTTE, inputs, budgets) -> tuple[list[str], torch.Tensor]:
    futures = [
        engine.submit(check_input(i, x), tte.decode_options(max_think_tokens=b), index=i)
        for i, (x, b) in enumerate(zip(inputs, budgets))
    ]
    engine.run_until_done()
    results = [f.result() for f in futures]
    return [r.trace for r in results], torch.stack([r.embedding for r in results])


@torch.inference_mode()
def run_hf(hf: HFBaseline, tte: UnifiedTTE, inputs, budgets, batch_size) -> tuple[list[str], torch.Tensor]:
    traces, embeddings = [], []
    for rows in batches(len(inputs), batch_size):
        items = [load_input(i, check_input(i, inputs[i])) for i in rows]
        images = [item.image for item in items if item.image is not None]
        prompts = [
            render_prompt(hf.processor, it, "query", True, tte.config.prompts, hf.vision) for it in items
        ]
        batch = hf._tokenize(prompts, images)
        out = hf.model.generate(
            **batch,
            max_new_tokens=max(budgets[i] for i in rows),
            do_sample=False,
            pad_token_id=tte.pad_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        cut = [new[j, : budgets[i]] for j, i in enumerate(rows)]
        batch_traces = [
            tte.config.prompts.think_prefix + hf.tokenizer.decode(t, skip_special_tokens=True) for t in cut
        ]
        full = [
            p + t[len(tte.config.prompts.think_prefix) :] + tte.embed_token
            for p, t in zip(prompts, batch_traces)
        ]
        hidden = hf.model(**hf._tokenize(full, images), output_hidden_states=True).hidden_states[-1]
        embeddings.append(F.normalize(hidden[:, -1].float(), dim=-1).cpu())
        traces += batch_traces
    return traces, torch.cat(embeddings)


def check_outputs(tte, engine, inputs, budgets, results, n_check: int) -> dict:
    """Traces equal across paths; the engine's embeddings equal static decoding at each own budget."""
    continuous_traces, continuous_emb = results["continuous"]
    same_traces = {name: traces == continuous_traces for name, (traces, _) in results.items()}
    worst = 0.0
    for i in range(min(n_check, len(inputs))):
        want = tte.encode([inputs[i]], think=True, max_think_tokens=budgets[i], scheduler="static")
        worst = max(worst, float((want.embeddings[0] - continuous_emb[i]).abs().max()))
    return {"traces_equal": same_traces, "embedding_max_abs_diff": worst}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_model_args(parser)
    harness.add_common_args(parser, repeats=3)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--max-think-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="static batch size = engine slot count")
    parser.add_argument(
        "--check", type=int, default=16, help="inputs whose embeddings are checked one by one"
    )
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF generate baseline")
    parser.add_argument("--compile", action="store_true", help="compiled decode steps (CUDA graphs on GPU)")
    parser.add_argument(
        "--prefill-attention",
        default="auto",
        help="the engine's admission prefill (tte_fast.runtime.packed_prefill)",
    )
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), harness.DTYPES[args.dtype]
    with harness.model_folder(args, position_sensitive=False) as path:
        tte = UnifiedTTE.from_pretrained(path, dtype=dtype, device=device, compile=args.compile)
        hf = None if args.skip_hf else HFBaseline(tte, path, dtype, device)
    inputs, budgets = make_corpus(args.inputs, args.max_think_tokens, tte.vision)
    engine = Engine(tte, slots=args.batch_size, prefill_attention=args.prefill_attention)
    paths = {
        "static": lambda: run_static(tte, inputs, budgets, args.batch_size),
        "continuous": lambda: run_continuous(engine, tte, inputs, budgets),
    }
    if hf is not None:
        paths = {"hf": lambda: run_hf(hf, tte, inputs, budgets, args.batch_size), **paths}
    results = {name: fn() for name, fn in paths.items()}  # also the warm-up
    times = harness.median_times(paths, device, args.repeats, warmup=0)
    checks = check_outputs(tte, engine, inputs, budgets, results, args.check)

    useful = sum(budgets)
    name = harness.model_name(args)
    print(
        f"model: {name}, {args.dtype} on {harness.device_name(device)}; {args.inputs} inputs, "
        f"budgets 1..{args.max_think_tokens} (mean {useful / len(budgets):.1f}), "
        f"batch/slots {args.batch_size}, engine prefill {engine.prefill_attention}"
    )
    base = times["static"]
    rows, report = [], {"paths": {}, "checks": checks, "budget_mean": useful / len(budgets)}
    for path_name, t in times.items():
        rate, tok = args.inputs / t.wall_s, useful / t.wall_s
        speedup, cpu_speedup = base.wall_s / t.wall_s, base.cpu_s / t.cpu_s
        rows.append(
            [
                path_name,
                f"{t.wall_s:.2f}",
                f"{rate:.1f}",
                f"{tok:.0f}",
                f"{speedup:.2f}x",
                f"{cpu_speedup:.2f}x",
            ]
        )
        report["paths"][path_name] = {
            "seconds": t.wall_s,
            "cpu_seconds": t.cpu_s,
            "inputs_per_s": rate,
            "tokens_per_s": tok,
        }
    # CPU time (all threads of this process) is steadier than wall time on a shared machine.
    harness.print_table(["path", "seconds", "inputs/s", "tokens/s", "vs static", "CPU vs static"], rows)
    print(
        f"traces equal to the engine's: {checks['traces_equal']}; engine vs static embeddings at own "
        f"budgets (first {args.check}): max |diff| {checks['embedding_max_abs_diff']:.2e}"
    )
    harness.save_report(args, report)


if __name__ == "__main__":
    main()
