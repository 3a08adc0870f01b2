"""``tte-fast traces CONFIG.yaml [key=value ...]``: reasoning traces of training records or
evaluation tasks into a folder of parquet shards, then (``join:``) the records training reads.

    tte-fast traces traces.yaml reasoner.path=CKPT output_dir=teacher/ [--resume]
    torchrun --nproc-per-node 8 -m tte_fast.cli traces traces.yaml --resume
    tte-fast traces traces.yaml --join-only        # join an existing folder, generate nothing

The config is described in ``tte_fast.traces.config`` and docs/traces.md. The job's JSON summary
(and the joins') is printed last on stdout by process 0.
"""

from __future__ import annotations

import argparse
import json
import os

from tte_fast.settings.yaml_config import ConfigError, load_config, save_config

CONFIG_FILE = "_config.yaml"  # "_": pyarrow.dataset skips it when reading the shards


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tte-fast traces",
        description="Generate reasoning traces (resumable parquet shards, sharded under torchrun) and "
        "join them into reasoner / embedder training records or the eval's trace cache.",
    )
    parser.add_argument("config", help="traces YAML (see docs/traces.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides")
    parser.add_argument("--resume", action="store_true", help="continue the output folder")
    parser.add_argument("--join-only", action="store_true", help="only join the folder's traces")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from tte_fast.traces.config import parse_traces_config

    try:
        raw = load_config(args.config, args.overrides)
        config = parse_traces_config(raw, base_dir=os.path.dirname(os.path.abspath(args.config)))
    except (ConfigError, ValueError) as err:
        raise SystemExit(f"tte-fast traces: {err}") from None
    main_process = int(os.environ.get("RANK", "0")) == 0
    result = {}
    if not args.join_only:
        result["job"] = _generate(config, raw, args)
    if main_process and any(vars(config.join).values()):
        from tte_fast.traces.join import JoinError, join_outputs

        try:
            result["join"] = join_outputs(config, config.output_dir)
        except JoinError as err:
            raise SystemExit(f"tte-fast traces: {err}") from None
    if main_process:
        print(json.dumps(result), flush=True)
    return result


def _generate(config, raw: dict, args) -> dict:
    from tte_fast.traces.job import TraceJobError, generate_traces
    from tte_fast.traces.reasoners import load_reasoner
    from tte_fast.traces.sources import read_inputs
    from tte_fast.train.records import DataError

    try:
        inputs = read_inputs(config)
    except (DataError, ValueError) as err:
        raise SystemExit(f"tte-fast traces: {err}") from None
    try:
        reasoner = load_reasoner(config)
    except ImportError as err:  # a backend's optional extra: the message names it
        raise SystemExit(f"tte-fast traces: {err}") from None
    try:
        summary = generate_traces(
            reasoner,
            inputs,
            config.output_dir,
            sides=config.sides,
            shard_size=config.shard_size,
            resume=args.resume,
            progress=False if args.quiet else None,
            source={"reasoner": config.reasoner.path},
        )
    except TraceJobError as err:
        raise SystemExit(str(err)) from None
    finally:
        if hasattr(reasoner, "close"):  # a vLLM worker in another environment
            reasoner.close()
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(raw, os.path.join(config.output_dir, CONFIG_FILE))
    return summary
