"""``tte-fast encode``: a JSONL or parquet corpus in, a folder of parquet shards (or, for a small job,
one safetensors file) out.

    tte-fast encode --model PATH --inputs corpus.jsonl --output emb/ [--resume] [--shard-size 256]
    torchrun --nproc-per-node 8 -m tte_fast.cli encode --model PATH --inputs corpus.parquet --output emb/
    tte-fast encode --model PATH --inputs queries.jsonl --output emb.safetensors   # all in memory

With an output folder, the job's JSON summary is printed last on stdout (process 0 only).
"""

from __future__ import annotations

import argparse
import json
import os

from tte_fast.checkpoint.recipes import add_recipe_argument
from tte_fast.corpus.reader import Columns, CorpusError, open_corpus
from tte_fast.runtime.packed_prefill import PREFILL_ATTENTION

DTYPES = ["float32", "bfloat16", "float16"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tte-fast encode",
        description="Embed a corpus (JSONL or parquet) into a folder of parquet shards with a manifest "
        "(resumable, sharded under torchrun), or into one .safetensors file.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint folder or id (a folder with reasoner/ and embedder/ loads a two-model TTE)",
    )
    parser.add_argument("--reasoner", default=None, help="a separate reasoner; --model is then the embedder")
    parser.add_argument(
        "--inputs",
        required=True,
        help='JSONL (one string or {"id", "text", "image", "video", "instruction"} a line) or parquet with '
        "those columns; relative image and video paths start at the file's folder (or --image-root)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output folder of parquet shards; a path ending in .safetensors writes one file instead "
        "(embeddings, and the traces to OUTPUT.traces.json)",
    )
    parser.add_argument("--resume", action="store_true", help="continue a folder: skip ids already written")
    parser.add_argument("--shard-size", type=int, default=256, help="inputs per parquet shard (default 256)")
    parser.add_argument("--embedding-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--side", default="query", choices=["query", "target"])
    think = parser.add_mutually_exclusive_group()
    think.add_argument("--think", dest="think", action="store_true", default=None, help="force thinking")
    think.add_argument(
        "--no-think", dest="think", action="store_false", help="embed without a reasoning trace"
    )
    parser.add_argument(
        "--max-think-tokens", type=int, default=None, help="default: the checkpoint's saved setting, else 256"
    )
    parser.add_argument("--max-answer-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-root", default=None, help="folder relative image and video paths start at")
    for name in ("id", "text", "image", "instruction", "video"):
        parser.add_argument(
            f"--{name}-column", default=name, help=f"key or column of the {name} (default {name})"
        )
    parser.add_argument(
        "--device", default=None, help="default: cuda (cuda:LOCAL_RANK under torchrun) if available"
    )
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: the checkpoint's")
    parser.add_argument(
        "--prefill-attention",
        default="auto",
        choices=PREFILL_ATTENTION,
        help="admission prefill: auto packs prompts without padding via flash-attn/xformers on GPU",
    )
    add_recipe_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    columns = Columns(
        args.id_column, args.text_column, args.image_column, args.instruction_column, args.video_column
    )
    try:
        corpus = open_corpus(args.inputs, columns, args.image_root)
    except CorpusError as err:
        raise SystemExit(str(err)) from None
    from tte_fast.checkpoint.load import load_tte
    from tte_fast.corpus.job import EncodeSettings

    try:
        settings = EncodeSettings(
            side=args.side,
            think=args.think,
            max_think_tokens=args.max_think_tokens,
            max_answer_tokens=args.max_answer_tokens,
            batch_size=args.batch_size,
            prefill_attention=args.prefill_attention,
            recipe=args.recipe,
            embedding_dtype=args.embedding_dtype,
        )
    except ValueError as err:
        raise SystemExit(f"tte-fast encode: {err}") from None
    model = load_tte(
        args.model, args.reasoner, device=_device(args.device), dtype=args.dtype, **settings.load_kwargs()
    )
    if args.output.endswith(".safetensors"):
        _encode_to_file(model, corpus, args, settings)
    else:
        _encode_to_folder(model, corpus, args, settings)


def _device(device: str | None) -> str | None:
    """cuda:LOCAL_RANK under torchrun when no index is given, so processes do not share one GPU."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None or not torch.cuda.is_available() or device not in (None, "cuda"):
        return device
    return f"cuda:{local_rank}"


def _encode_to_folder(model, corpus, args, settings) -> None:
    from tte_fast.corpus.job import CorpusJobError, encode_corpus

    try:
        summary = encode_corpus(
            model,
            corpus,
            args.output,
            settings,
            shard_size=args.shard_size,
            resume=args.resume,
            progress=False if args.quiet else None,
            model_path=args.model,
        )
    except CorpusJobError as err:
        raise SystemExit(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary), flush=True)


def _encode_to_file(model, corpus, args, settings) -> None:
    """The whole corpus in memory, into one safetensors file; a bad input stops the job, naming its line."""
    from safetensors.torch import save_file

    from tte_fast.inputs import InputError

    if args.resume:
        raise SystemExit("--resume needs an output folder, not a .safetensors file")
    try:
        result = model.encode(corpus.records(list(range(len(corpus)))), **settings.encode_kwargs())
    except InputError as err:
        raise SystemExit(f"{corpus.where(err.index)}: {err}") from None
    save_file({"embeddings": result.embeddings.contiguous()}, args.output)
    if result.traces is not None:
        with open(args.output + ".traces.json", "w", encoding="utf-8") as f:
            json.dump(result.traces, f, ensure_ascii=False, indent=1)
    print(f"wrote {tuple(result.embeddings.shape)} embeddings to {args.output}")
