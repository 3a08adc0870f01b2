"""``tte-fast train CONFIG.yaml [key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import os

from tte_fast.settings.yaml_config import ConfigError, load_config


def resolve_data_paths(config, folder: str) -> None:
    """Relative data files and image roots start at the config file's folder."""
    for d in config.data.datasets:
        d.path = os.path.join(folder, d.path)
        if d.image_root is not None:
            d.image_root = os.path.join(folder, d.image_root)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="tte-fast train",
        description="Train a reasoner (SFT), an embedder (contrastive, GradCache) or a TTE_u head. "
        "Run under torchrun for several processes.",
    )
    parser.add_argument("config", help="YAML config of the run (see docs/train.md)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value settings over the file, e.g. train.steps=10"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in output_dir"
    )
    args = parser.parse_args(argv)

    from tte_fast.train.config import parse_config
    from tte_fast.train.loop import train
    from tte_fast.train.records import DataError

    try:
        raw = load_config(args.config, args.overrides)
        config = parse_config(raw)
        resolve_data_paths(config, os.path.dirname(os.path.abspath(args.config)))
    except ConfigError as err:
        raise SystemExit(f"{args.config}: {err}") from None
    try:
        final = train(config, resume=args.resume, raw_config=raw)
    except DataError as err:
        raise SystemExit(f"bad training data: {err}") from None
    print(f"trained model written to {final}")
    return final


if __name__ == "__main__":
    main()
