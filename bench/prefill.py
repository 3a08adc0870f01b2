"""Admission prefill of the continuous-batching engine: padded against packed (padding-free).

``--prompts`` prompts of skewed lengths (most short, a few long, as queries are; every third with an
image on Qwen-VL models) enter ``--prompts`` free slots in one admission, with a think budget of one
token and no embedding, so a run is the prefill alone (plus the processor and the first sample).
Each backend of ``tte_fast.runtime.packed_prefill`` that the device allows is timed: ``padded`` (the
baseline), ``sdpa_varlen``, and on CUDA ``flash_varlen`` / ``xformers`` where installed.

Reported: median seconds, prompt tokens per second, the token rows the text layers compute (padded:
prompts x longest; packed: the prompts' own tokens) and the speedup against padded in the same run.
Checked: every backend's slot caches equal the padded prefill's (max relative difference).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from tte_fast import UnifiedTTE
from tte_fast.inputs import check_input
from tte_fast.runtime.engine import Engine
from tte_fast.runtime.packed_prefill import BACKENDS, missing_requirement

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WORDS = "red green blue grey round square small large left right above below".split()  # noqa: SIM905


def make_prompts(n: int, max_words: int, vision: bool, seed: int = 0) -> list:
    """``n`` prompts of ``ceil(max_words * u**3)`` words (mean about a quarter of the most)."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        words = max(1, int(np.ceil(max_words * rng.random() ** 3)))
        text = " ".join(rng.choice(WORDS, words))
        if vision and i % 3 == 0:
            side = int(rng.integers(4, 17)) * 28
            prompts.append({"image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "text": text})
        else:
            prompts.append(text)
    return prompts


def admit_all(engine: Engine, tte: UnifiedTTE, prompts: list) -> list[int]:
    """One admission of every prompt (think-only, one token: the request ends at its first sample)."""
    options = tte.decode_options(max_think_tokens=1)
    futures = [engine.submit(check_input(i, p), options, embed=False, index=i) for i, p in enumerate(prompts)]
    engine.run_until_done()
    return [f.result().prompt_tokens for f in futures]


def slot_difference(got: Engine, want: Engine) -> float:
    """Largest relative difference between two engines' slot caches (their prompts' columns)."""
    worst = 0.0
    for slot, n in enumerate(want.cache.positions.tolist()):
        for a, b in zip(got.cache.keys + got.cache.values, want.cache.keys + want.cache.values):
            x, y = a[slot, :, :n].double(), b[slot, :, :n].double()
            worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-6)))
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_model_args(parser)
    harness.add_common_args(parser, repeats=5)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per admission (= slots)")
    parser.add_argument("--max-words", type=int, default=400, help="words of the longest prompts")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every one the device allows")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), harness.DTYPES[args.dtype]
    with harness.model_folder(args, position_sensitive=False) as path:
        tte = UnifiedTTE.from_pretrained(path, dtype=dtype, device=device, attn_implementation="sdpa")
    backends = args.backends or [b for b in BACKENDS if missing_requirement(b, tte.hf_model) is None]
    if backends[0] != "padded":
        backends = ["padded"] + [b for b in backends if b != "padded"]
    prompts = make_prompts(args.prompts, args.max_words, tte.vision)
    engines = {b: Engine(tte, slots=len(prompts), prefill_attention=b) for b in backends}
    lengths = admit_all(engines["padded"], tte, prompts)  # also the warm-up of the other backends below
    times = harness.median_times(
        {b: (lambda e=e: admit_all(e, tte, prompts)) for b, e in engines.items()}, device, args.repeats
    )

    tokens = sum(lengths)
    rows_computed = {b: tokens if b != "padded" else len(lengths) * max(lengths) for b in backends}
    name = harness.model_name(args)
    print(
        f"model: {name}, {args.dtype} on {harness.device_name(device)}; {len(prompts)} prompts of "
        f"{min(lengths)}..{max(lengths)} tokens (mean {tokens / len(lengths):.0f}) in one admission"
    )
    base = times["padded"]
    rows, report = [], {"prompt_tokens": lengths, "backends": {}}
    for b, t in times.items():
        diff = slot_difference(engines[b], engines["padded"])
        rows.append(
            [
                b,
                f"{t.wall_s * 1e3:.1f}",
                f"{tokens / t.wall_s:.0f}",
                rows_computed[b],
                f"{base.wall_s / t.wall_s:.2f}x",
                f"{base.cpu_s / t.cpu_s:.2f}x",
                f"{diff:.1e}",
            ]
        )
        report["backends"][b] = {
            "seconds": t.wall_s,
            "cpu_seconds": t.cpu_s,
            "prompt_tokens_per_s": tokens / t.wall_s,
            "token_rows_computed": rows_computed[b],
            "slot_cache_max_rel_diff_vs_padded": diff,
        }
    header = ["prefill", "ms", "prompt tok/s", "token rows", "vs padded", "CPU vs padded", "cache diff"]
    harness.print_table(header, rows)
    harness.save_report(args, report)


if __name__ == "__main__":
    main()
