"""``tte-fast eval CONFIG.yaml [key=value ...]``: run an evaluation config.

Overrides use dotted keys into the YAML (``model.path=CKPT tasks.0.sample_cap=10
search.backend=faiss_flat``). Data paths in the config start at the config file's folder; the model
path, ``output_dir`` and ``cache_dir`` at the working directory. The resolved config is saved as
``OUTPUT_DIR/config.yaml``. Under ``torchrun`` the process group is set up here (NCCL on GPUs, gloo
otherwise) and the work is shared across processes.
"""

from __future__ import annotations

import argparse
import os

from tte_fast.checkpoint.recipes import add_recipe_argument
from tte_fast.distributed import process_group, world
from tte_fast.settings.yaml_config import ConfigError, load_config, save_config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="tte-fast eval", description="MMEB-style retrieval evaluation of a TTE model"
    )
    parser.add_argument("config", help="evaluation YAML (see docs/eval.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or table")
    add_recipe_argument(parser)
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"model.recipe={args.recipe}"] if args.recipe else [])

    from tte_fast.eval.config import parse_config
    from tte_fast.eval.data import EvalDataError
    from tte_fast.eval.runner import evaluate

    try:
        raw = load_config(args.config, overrides)
        config = parse_config(raw, base_dir=os.path.dirname(os.path.abspath(args.config)))
    except ConfigError as err:
        raise SystemExit(f"tte-fast eval: {err}") from None
    with process_group():
        if world()[0] == 0:
            save_config(raw, os.path.join(config.output_dir, "config.yaml"))
        try:
            return evaluate(config, verbose=not args.quiet)
        except EvalDataError as err:
            raise SystemExit(f"tte-fast eval: {err}") from None
