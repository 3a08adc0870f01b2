"""``tte-fast`` command line: each subcommand (demo, encode, train, eval, serve) parses its own arguments."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tte-fast", description="Think-Then-Embed runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    # No help flag of its own: ``demo --help`` reaches the demo's parser, which lists its options.
    commands.add_parser(
        "demo", help="think, embed and retrieve on minibench queries with the shipped model", add_help=False
    )
    commands.add_parser(
        "train", help="train a reasoner, an embedder or a TTE_u head: train CONFIG.yaml", add_help=False
    )
    # Its own parser (tte_fast/corpus/cli.py) takes the inputs, the output folder and the options.
    commands.add_parser(
        "encode", help="embed a JSONL / parquet corpus into parquet shards (resumable)", add_help=False
    )
    # Its own parser (tte_fast/eval/cli.py) takes the config and the key=value overrides.
    commands.add_parser(
        "eval", help="MMEB-style evaluation: eval CONFIG.yaml [key=value ...]", add_help=False
    )
    # Its own parser (tte_fast/minibench/cli.py) takes the run folder, seed and profile.
    commands.add_parser(
        "minibench", help="generate the miniature TTE benchmark, train and score 4 variants", add_help=False
    )
    # Its own parser (tte_fast/serve/cli.py) takes the model, host, port, key and limits.
    commands.add_parser(
        "serve", help="OpenAI/vLLM-compatible embeddings server: serve --model PATH", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "encode":
        from tte_fast.corpus.cli import main as encode_main

        encode_main(rest)
    elif args.command == "eval":
        from tte_fast.eval.cli import main as eval_main

        eval_main(rest)
    elif args.command == "demo":
        from tte_fast.demo import main as demo_main

        demo_main(rest)
    elif args.command == "serve":
        from tte_fast.serve.cli import main as serve_main

        serve_main(rest)
    elif args.command == "minibench":
        from tte_fast.minibench.cli import main as minibench_main

        minibench_main(rest)
    elif args.command == "train":
        from tte_fast.train.cli import main as train_main

        train_main(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")


if __name__ == "__main__":
    main(sys.argv[1:])
