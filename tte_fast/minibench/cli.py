"""``tte-fast minibench``: generate the miniature benchmark, train the four variants, score them."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="tte-fast minibench",
        description="Generate the miniature TTE benchmark, train baseline / TTE_t / TTE_s / TTE_u through "
        "tte-fast train and score them through tte-fast eval; prints the summary as JSON.",
    )
    parser.add_argument("--output", default="minibench_run", help="run folder (data, models, results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=("full", "fast"), default="full", help="fast: tiny sizes")
    parser.add_argument("--data-only", action="store_true", help="only write the data, base model, configs")
    parser.add_argument("--eval-only", action="store_true", help="score the models already trained")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of each of the two trainings that run at once; the reasoner, the head "
        "and the evaluations, which run alone, take twice as many",
    )
    parser.add_argument("--export", default=None, help="copy the trained TTE_u model to this folder")
    args = parser.parse_args(argv)

    from tte_fast.minibench.pipeline import PROFILES, export_model, prepare, run
    from tte_fast.minibench.report import format_summary

    if args.data_only:
        prepare(args.output, args.seed, PROFILES[args.profile]["size"])
        print(f"data, base model and configs written under {args.output}")
        return {}
    steps = ("eval",) if args.eval_only else ("train", "eval")
    summary = run(args.output, seed=args.seed, profile=args.profile, steps=steps, threads=args.threads)
    if args.export:
        export_model(args.output, args.export)
    print(format_summary(summary))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
