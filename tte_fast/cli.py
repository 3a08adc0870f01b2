"""``tte-fast`` command line: each subcommand parses its own arguments in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module whose main(argv) runs it, help). No help flag here: ``NAME --help`` reaches the
# subcommand's own parser, which lists its options.
COMMANDS = {
    "demo": ("tte_fast.demo", "think, embed and retrieve on minibench queries with the shipped model"),
    "train": ("tte_fast.train.cli", "train a reasoner, an embedder or a TTE_u head: train CONFIG.yaml"),
    "encode": ("tte_fast.corpus.cli", "embed a JSONL / parquet corpus into parquet shards (resumable)"),
    "traces": (
        "tte_fast.traces.cli",
        "reasoning traces of training records or eval tasks into parquet shards (resumable), joined "
        "into training records: traces CONFIG.yaml",
    ),
    "eval": ("tte_fast.eval.cli", "MMEB-style evaluation: eval CONFIG.yaml [key=value ...]"),
    "minibench": (
        "tte_fast.minibench.cli",
        "generate the miniature TTE benchmark, train and score 4 variants",
    ),
    "serve": ("tte_fast.serve.cli", "OpenAI/vLLM-compatible embeddings server: serve --model PATH"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tte-fast", description="Think-Then-Embed runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    importlib.import_module(COMMANDS[args.command][0]).main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
