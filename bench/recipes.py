"""The recipes (ume_r1, rge, vlm2vec) against their authors' own inference pipelines.

For each recipe, the same inputs (text-only ones and ones with a random image, fixed seed) are
embedded twice on the same HF model (same weights):

1. ``authors``: ``tte_fast.checkpoint.authors.authors_embed``, the authors' pipeline in plain HF
   transformers: one input at a time, HF ``generate(output_hidden_states=True, ...)`` where the
   recipe thinks, their processor at their pixel budget;
2. ``tte_fast``: ``UnifiedTTE.from_pretrained(ckpt, recipe=NAME).encode(..., batch_size=B)``.

Queries think where the recipe thinks (UME-R1's gen mode and RGE queries; VLM2Vec never generates),
both paths with the same generation budget (``--max-new-tokens``) and the checkpoint's sampling
settings. Reported: seconds per path (median of ``--runs`` after one warm-up; loading excluded), the
speed-up, the largest embedding difference and how many token sequences (prompt, trace, embedding
token) are identical.

Checkpoints:

- default: one tiny look-alike per recipe (``tte_fast.testing.build_recipe_checkpoint``: the
  published checkpoint's model type, added tokens and Qwen-VL-Instruct generation config). For
  ume_r1 and rge with ``emits_embed_token=True``: the random model emits the embedding token within
  a few steps, so rows stop by themselves at varied lengths. vlm2vec has no embedding token and
  generates nothing, so it is built without;
- ``--shape qwen2_vl_2b``: one random-weight model of that shape for all recipes, its tokenizer given
  the recipes' tokens (inside its padded vocabulary) and the same generation config. Random weights
  never emit the embedding token, so every thinking row runs the whole budget. rge runs on this
  Qwen2-VL shape although RGE itself is a Qwen2.5-VL-3B;
- ``--model PATH``: a real checkpoint, every ``--recipes`` on it.

The sampling settings are the checkpoint's (Qwen-VL-Instruct: ``do_sample`` with ``top_k=1``,
``repetition_penalty=1.05``), on both paths.

Goal: at batch 16 with thinking, tte_fast >= 3x the authors' pipeline, with identical outputs.

    python bench/recipes.py                                   # tiny look-alikes on CPU
    python bench/recipes.py --shape qwen2_vl_2b --device cuda --dtype bfloat16 --batch 16
    python bench/recipes.py --shape qwen2_vl_2b --shape-dir DIR ...  # DIR: that shape, already built
    python bench/recipes.py --model PATH --recipes ume_r1 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import tempfile

import numpy as np
import PIL.Image
import torch

from tte_fast import UnifiedTTE
from tte_fast.checkpoint.authors import AUTHORS_PIXELS, authors_embed
from tte_fast.checkpoint.loading import processor_source

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

RECIPES = ("ume_r1", "rge", "vlm2vec")
THINKS = {"ume_r1": True, "rge": True, "vlm2vec": False}  # on the query side
EMBED_TOKENS = {"ume_r1": "<gen_emb>", "rge": "<emb>"}
RECIPE_TOKENS = ("<gen_emb>", "<disc_emb>", "<emb>")
GOAL_SPEEDUP = 3.0  # at batch 16 with thinking
# Embeddings "identical": float32 to rounding; in bf16 a batched forward rounds differently from one row.
GOAL_MAX_DIFF = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
WORDS = (
    "a red cat sat on the old mat while two dogs ran after the small blue ball in the park near a tall tree"
)


def make_inputs(n: int, seed: int = 0) -> list[dict]:
    """``n`` query inputs of varied length; every other one has a random RGB image of varied size."""
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(n):
        words = rng.choice(WORDS.split(), size=4 + (7 * i) % 13)
        item = {"text": f"Item {i}: " + " ".join(words) + "."}
        if i % 2 == 0:
            h, w = 40 + 12 * (i % 5), 48 + 10 * (i % 3)
            item["image"] = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        inputs.append(item)
    return inputs


def add_recipe_tokens(path: str) -> None:
    """Give a random-shape checkpoint (``build_random_checkpoint``) what the recipes need, as
    ``build_recipe_checkpoint`` gives the tiny ones: the tokens added with ``add_tokens`` (inside
    the padded vocabulary, so the weights keep their shape) and Qwen-VL-Instruct's generation config."""
    import json

    from transformers import AutoTokenizer, GenerationConfig

    from tte_fast.checkpoint.hf_processor import CHAT_TEMPLATE_FILE, packaged_chat_template
    from tte_fast.testing import QWEN_VL_SAMPLING

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens(list(RECIPE_TOKENS))
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab_size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"{len(tokenizer)} tokens do not fit the checkpoint's vocabulary of {vocab_size}")
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
        f.write(packaged_chat_template())  # the tokenizer's save wrote its text-only template
    vocab = tokenizer.get_vocab()
    GenerationConfig(
        bos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        eos_token_id=[vocab["<|im_end|>"], vocab["<|endoftext|>"]],
        **QWEN_VL_SAMPLING,
    ).save_pretrained(path)


def link_checkpoint(source: str, path: str) -> None:
    """A copy of the checkpoint folder ``source`` at ``path`` whose weights are links to the
    originals (the small files are copied, so that rewriting them leaves ``source`` as it was)."""
    os.makedirs(path)
    for name in os.listdir(source):
        src, dst = os.path.join(source, name), os.path.join(path, name)
        if name.endswith(".safetensors"):
            os.symlink(os.path.abspath(src), dst)
        elif os.path.isfile(src):
            shutil.copyfile(src, dst)


@contextlib.contextmanager
def checkpoints(args):
    """recipe -> checkpoint folder: ``--model``, one ``--shape`` model for all, or tiny look-alikes."""
    if args.model is not None:
        yield {r: args.model for r in args.recipes}
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape is not None:
            path = os.path.join(tmp, args.shape)
            if args.shape_dir is not None and os.path.isfile(os.path.join(args.shape_dir, "config.json")):
                link_checkpoint(args.shape_dir, path)
            else:
                from tte_fast.testing import build_random_checkpoint

                dtype = harness.DTYPES[args.dtype]
                build_random_checkpoint(args.shape, path, dtype=dtype, device=args.device)
            add_recipe_tokens(path)
            yield {r: path for r in args.recipes}
            return
        from tte_fast.testing import build_recipe_checkpoint

        yield {
            r: build_recipe_checkpoint(r, os.path.join(tmp, r), seed=args.seed, emits_embed_token=THINKS[r])
            for r in args.recipes
        }


def checkpoint_name(args) -> str:
    if args.model is not None:
        return args.model
    if args.shape is not None:
        return f"random {args.shape} shape (recipe tokens added)"
    return "tiny look-alikes (build_recipe_checkpoint; emits_embed_token=True for ume_r1, rge)"


def authors_processor(recipe: str, path: str, model_type: str):
    """The authors' processor: transformers' own (its PIL image processor, no video processor, which
    would need torchvision), loaded with their pixel budget and the checkpoint's chat template."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    from tte_fast.checkpoint.hf_processor import build_processor, saved_chat_template

    source = processor_source(path)
    min_pixels, max_pixels = AUTHORS_PIXELS[recipe]
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(
        source, min_pixels=min_pixels, max_pixels=max_pixels
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    return build_processor(model_type, tokenizer, image_processor, saved_chat_template(source))


def bench_recipe(recipe: str, path: str, inputs: list[dict], args) -> dict:
    device = torch.device(args.device)
    tte = UnifiedTTE.from_pretrained(path, recipe=recipe, dtype=harness.DTYPES[args.dtype], device=device)
    processor = authors_processor(recipe, path, tte.model_type)
    think = THINKS[recipe]
    budget = args.max_new_tokens
    fns = {
        "authors": lambda: authors_embed(
            recipe, tte.hf_model, processor, inputs, side="query", think=think, max_new_tokens=budget
        ),
        "tte_fast": lambda: tte.encode(
            inputs,
            think=think,
            max_think_tokens=budget,
            batch_size=args.batch,
            side="query",
            scheduler=args.scheduler,
            progress=False,
        ),
    }
    results = {name: fn() for name, fn in fns.items()}  # the warm-up; its outputs are compared
    times = harness.median_times(fns, device, args.runs, warmup=0)
    ours, theirs = results["tte_fast"], results["authors"]
    diff = float((ours.embeddings.float().cpu() - theirs.embeddings.float().cpu()).abs().max())
    same = sum(
        a is not None and torch.equal(a.cpu(), b.cpu()) for a, b in zip(ours.sequences, theirs.sequences)
    )
    report = {
        "inputs": len(inputs),
        "images": sum("image" in x for x in inputs),
        "think": think,
        "max_new_tokens": budget if think else None,
        "authors_s": times["authors"].wall_s,
        "tte_fast_s": times["tte_fast"].wall_s,
        "authors_cpu_s": times["authors"].cpu_s,
        "tte_fast_cpu_s": times["tte_fast"].cpu_s,
        "speedup": times["authors"].wall_s / times["tte_fast"].wall_s,
        "max_abs_diff": diff,
        "sequences_identical": same,
        "sequences_total": len(inputs),
    }
    if think:  # how the authors' generations ended: the embedding token, or the budget
        token_id = processor.tokenizer.convert_tokens_to_ids(EMBED_TOKENS[recipe])
        lengths = [len(g) for g in theirs.generated]
        report["generated_tokens"] = lengths
        report["stopped_by_embed_token"] = sum(token_id in g.tolist() for g in theirs.generated)
    return report


def goal_met(r: dict, dtype: str) -> bool:
    return (
        r["speedup"] >= GOAL_SPEEDUP
        and r["sequences_identical"] == r["sequences_total"]
        and r["max_abs_diff"] <= GOAL_MAX_DIFF[dtype]
    )


def machine() -> str:
    """CPU model and core count (and the GPU where one is used)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="a real checkpoint folder (every --recipes on it)")
    source.add_argument("--shape", default=None, help="a random-weight model of this shape, e.g. qwen2_vl_2b")
    parser.add_argument(
        "--shape-dir",
        default=None,
        help="with --shape: a folder where build_random_checkpoint already saved that shape (its weights "
        "are linked, not rebuilt; the folder is left unchanged)",
    )
    harness.add_common_args(parser, repeats=3)
    parser.add_argument(
        "--runs", dest="repeats", type=int, default=argparse.SUPPRESS, help="same as --repeats"
    )
    parser.add_argument("--batch", type=int, default=16, help="tte_fast's batch size (continuous: slots)")
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generation budget of both paths")
    parser.add_argument("--scheduler", default="continuous", choices=("continuous", "static"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.runs = args.repeats

    inputs = make_inputs(args.inputs, args.seed)
    with checkpoints(args) as paths:
        report = {"checkpoint": checkpoint_name(args), "machine": machine(), "recipes": {}}
        for recipe in args.recipes:
            report["recipes"][recipe] = bench_recipe(recipe, paths[recipe], inputs, args)

    print(
        f"checkpoint: {report['checkpoint']}; {args.dtype} on {harness.device_name(args.device)} "
        f"({report['machine']}); torch {torch.__version__}, "
        f"transformers {harness.versions().get('transformers')}"
    )
    print(
        f"{args.inputs} query inputs ({sum('image' in x for x in inputs)} with images), tte_fast batch "
        f"{args.batch} ({args.scheduler}), budget {args.max_new_tokens} new tokens where thinking; median "
        f"of {args.runs} after 1 warm-up, load excluded"
    )
    rows = []
    for recipe, r in report["recipes"].items():
        stopped = f"{r['stopped_by_embed_token']}/{r['inputs']}" if r["think"] else "-"
        rows.append(
            [
                recipe,
                r["inputs"],
                "yes" if r["think"] else "no",
                f"{r['authors_s']:.2f}",
                f"{r['tte_fast_s']:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['authors_cpu_s'] / r['tte_fast_cpu_s']:.2f}x",
                f"{r['max_abs_diff']:.1e}",
                f"{r['sequences_identical']}/{r['sequences_total']}",
                stopped,
            ]
        )
    harness.print_table(
        [
            "recipe",
            "inputs",
            "think",
            "authors s",
            "tte_fast s",
            "speedup",
            "CPU-time speedup",
            "max |emb diff|",
            "sequences identical",
            "stopped at embed token",
        ],
        rows,
    )
    goal = {recipe: goal_met(r, args.dtype) for recipe, r in report["recipes"].items() if r["think"]}
    report["goal_met"] = goal
    if goal:
        print(
            f"goal (thinking recipes >= {GOAL_SPEEDUP:g}x the authors', sequences identical, embeddings "
            f"within {GOAL_MAX_DIFF[args.dtype]:g}): "
            + ", ".join(f"{k} {'met' if v else 'not met'}" for k, v in goal.items())
        )
    harness.save_report(args, report)


if __name__ == "__main__":
    main()
