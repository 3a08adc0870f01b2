"""UnifiedTTE's two claims, measured on one model in one process.

1. ``embed``: the embedding step after thinking (one decode step of the embedding token on the KV
   cache generation left) versus re-encoding query + trace from scratch, at several context lengths.
   Goal: at least 10x cheaper at 1024 tokens.
2. ``decode``: the batched decode loop versus HF ``generate`` (greedy, same model, same prompts, every
   row runs the full budget), in generated tokens per second. Goal: 1.5x on CPU, 3x on GPU with
   ``--compile`` (CUDA graphs).

Times are medians of ``--repeats`` runs after a warm-up; ratios are against the baseline of the same
run. Defaults are small (tiny random Qwen2 model); the sizes of the goals:
``--contexts 256 1024 2048 --batch-size 8 --new-tokens 128``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

from tte_fast.kernels import pool_normalize
from tte_fast.model import UnifiedTTE
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.positions import decode_position_ids, prefill_position_ids
from tte_fast.runtime.static import StaticBatches

# harness.py lies beside this file; found also when this file is loaded by path (tests). Appended,
# so that bench/ shadows no other module.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def prompt_token_ids(tte: UnifiedTTE) -> torch.Tensor:
    """The ids a random prompt may hold: rows of the model's embedding matrix that are ordinary
    tokens, i.e. inside the tokenizer's base vocabulary (special tokens and added tokens, such as
    Qwen's vision and ``<think>`` tokens, left out, wherever in the range they lie)."""
    rows = tte.hf_model.get_input_embeddings().num_embeddings
    tokenizer = tte.tokenizer
    high = min(rows, getattr(tokenizer, "vocab_size", None) or rows)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = torch.arange(high)
    return ids[~torch.isin(ids, torch.tensor(sorted(special), dtype=torch.long))]


def random_prompts(tte: UnifiedTTE, batch: int, length: int, seed: int, ragged: bool) -> dict:
    """Left-padded random text prompts drawn from ``prompt_token_ids``; ragged rows differ in length."""
    g = torch.Generator().manual_seed(seed)
    vocabulary = prompt_token_ids(tte)
    ids = vocabulary[torch.randint(0, len(vocabulary), (batch, length), generator=g)]
    mask = torch.ones(batch, length, dtype=torch.long)
    if ragged:
        for row in range(batch):
            mask[row, : row * max(1, length // (4 * batch))] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids.to(tte.device), "attention_mask": mask.to(tte.device)}


@torch.inference_mode()
def bench_embed(tte: UnifiedTTE, decoder: StaticBatches, context: int, batch: int, repeats: int) -> dict:
    """One embedding-token step on a cache holding ``context`` tokens vs a forward over context + 1."""
    device = tte.device
    prompts = random_prompts(tte, batch, context, seed=context, ragged=False)
    emb = torch.full((batch, 1), tte.embed_token_id, device=device)
    steps = repeats + 2  # warm-up + repeats, each at the next cache slot
    cache = decoder.new_cache(batch, context + steps)
    mask = torch.zeros(batch, decoder.mask_width(context + steps), dtype=torch.long, device=device)
    mask[:, :context] = 1
    positions, deltas = prefill_position_ids(tte.hf_model, prompts)
    prefill_mask = decoder.visible_mask(mask, context)
    runner = decoder.runner
    runner.forward(
        prompts["input_ids"], positions, prefill_mask, cache, runner.cache_positions(0, context, device)
    )
    slot = [context]

    def embed_step():
        column = slot[0]
        mask[:, column] = 1
        text_pos = torch.full((batch,), column, device=device)
        # What the decode loop runs when only embedding tokens are left: backbone step, no LM head.
        slot_position = runner.cache_positions(column, 1, device)
        step_mask = decoder.visible_mask(mask, column + 1)
        hidden = runner.forward(emb, decode_position_ids(text_pos, deltas), step_mask, cache, slot_position)
        pool_normalize(hidden[:, None], torch.ones(batch, 1, dtype=torch.long, device=device))
        slot[0] += 1

    full = {
        "input_ids": torch.cat([prompts["input_ids"], emb], dim=1),
        "attention_mask": torch.ones(batch, context + 1, dtype=torch.long, device=device),
    }
    full_positions, _ = prefill_position_ids(tte.hf_model, full)

    def re_encode():
        hidden = tte.hf_model.base_model(
            input_ids=full["input_ids"],
            attention_mask=full["attention_mask"],
            position_ids=full_positions,
            use_cache=False,
        ).last_hidden_state
        pool_normalize(hidden, full["attention_mask"])

    step_s = harness.median_seconds(embed_step, device, repeats)
    full_s = harness.median_seconds(re_encode, device, repeats)
    return {
        "context": context,
        "batch": batch,
        "embed_step_ms": 1e3 * step_s,
        "re_encode_ms": 1e3 * full_s,
        "speedup": full_s / step_s,
    }


@torch.inference_mode()
def bench_decode(
    tte: UnifiedTTE, decoder: StaticBatches, batch: int, prompt_len: int, new_tokens: int, repeats: int
) -> dict:
    """Tokens per second of the decode loop and of HF generate, every row decoding ``new_tokens``."""
    device = tte.device
    prompts = random_prompts(tte, batch, prompt_len, seed=1, ragged=True)
    options = DecodeOptions(max_think_tokens=new_tokens, pad_token_id=tte.pad_token_id)  # no EOS: full budget
    hf_config = copy.deepcopy(tte.hf_model.generation_config)
    hf_config.eos_token_id = None
    hf_config.pad_token_id = tte.pad_token_id
    results = {}

    def ours():
        results["ours"] = decoder.decode(prompts, options)

    def hf():
        results["hf"] = tte.hf_model.generate(
            **prompts, generation_config=hf_config, max_new_tokens=new_tokens, do_sample=False
        )

    ours_s = harness.median_seconds(ours, device, repeats)
    hf_s = harness.median_seconds(hf, device, repeats)
    hf_tokens = results["hf"][:, prompt_len:]
    same = sum(int(a.tolist() == b.tolist()) for a, b in zip(results["ours"].generated, hf_tokens))
    total = batch * new_tokens
    return {
        "batch": batch,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "ours_tok_s": total / ours_s,
        "hf_tok_s": total / hf_s,
        "speedup": hf_s / ours_s,
        "rows_identical": f"{same}/{batch}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_model_args(parser, model_type="qwen2")
    harness.add_common_args(parser, repeats=5)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--embed-batch", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on GPU)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip", choices=["embed", "decode"], default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with harness.model_folder(args) as path:
        tte = UnifiedTTE.from_pretrained(path, dtype=harness.DTYPES[args.dtype], device=device)
    decoder = StaticBatches.of(tte.hf_model, compile=args.compile)
    name = harness.model_name(args)
    threads = torch.get_num_threads()
    print(
        f"model: {name}, {args.dtype} on {harness.device_name(device)}, compile={args.compile}, "
        f"threads={threads}"
    )
    versions = ", ".join(f"{k} {v}" for k, v in harness.versions().items() if k in ("torch", "transformers"))
    print(f"times: median of {args.repeats} runs after a warm-up; {versions}")

    report = {}
    if args.skip != "embed":
        rows = [bench_embed(tte, decoder, c, args.embed_batch, args.repeats) for c in args.contexts]
        report["embed"] = rows
        harness.print_table(
            ("context", "embed step ms", "re-encode ms", "speedup"),
            [
                (
                    r["context"],
                    f"{r['embed_step_ms']:.2f}",
                    f"{r['re_encode_ms']:.2f}",
                    f"{r['speedup']:.1f}x",
                )
                for r in rows
            ],  # fmt: skip
            title=f"embed after thinking, batch {args.embed_batch}: cache step vs re-encode of query + trace",
        )
    if args.skip != "decode":
        r = bench_decode(tte, decoder, args.batch_size, args.prompt_tokens, args.new_tokens, args.repeats)
        report["decode"] = r
        harness.print_table(
            ("path", "tokens/s", "ratio"),
            [
                ("HF generate", f"{r['hf_tok_s']:.1f}", "1.00x"),
                ("tte_fast", f"{r['ours_tok_s']:.1f}", f"{r['speedup']:.2f}x"),
            ],
            title=(
                f"decode, batch {r['batch']}, {r['new_tokens']} new tokens, "
                f"prompts of at most {r['prompt_tokens']} tokens"
            ),
        )
        print(f"greedy rows identical to HF generate: {r['rows_identical']}")
    harness.save_report(args, report)


if __name__ == "__main__":
    main(sys.argv[1:])
