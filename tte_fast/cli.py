"""``tte-fast`` command line: the demo, and encoding a JSONL file of inputs to safetensors."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _read_jsonl(path: str) -> tuple[list, list[int]]:
    """The inputs of a JSONL file and the line number of each; relative image paths are taken
    relative to the file's folder, so a JSONL file and its images can move together."""
    inputs, line_numbers = [], []
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
            if not isinstance(item, (str, dict)):
                raise SystemExit(
                    f"{path}:{line_number}: expected a string or an object, got {type(item).__name__}"
                )
            image = item.get("image") if isinstance(item, dict) else None
            if isinstance(image, str) and not os.path.isabs(image):
                item = {**item, "image": os.path.join(folder, image)}
            inputs.append(item)
            line_numbers.append(line_number)
    if not inputs:
        raise SystemExit(f"{path}: no inputs")
    return inputs, line_numbers


def encode_command(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from tte_fast import UnifiedTTE
    from tte_fast.inputs import InputError

    inputs, line_numbers = _read_jsonl(args.inputs)
    model = UnifiedTTE.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    try:
        result = model.encode(
            inputs,
            think=not args.no_think,
            max_think_tokens=args.max_think_tokens,
            batch_size=args.batch_size,
        )
    except InputError as err:
        raise SystemExit(f"{args.inputs}:{line_numbers[err.index]}: {err}") from None
    save_file({"embeddings": result.embeddings.contiguous()}, args.output)
    if result.traces is not None:
        with open(args.output + ".traces.json", "w", encoding="utf-8") as f:
            json.dump(result.traces, f, ensure_ascii=False, indent=1)
    print(f"wrote {tuple(result.embeddings.shape)} embeddings to {args.output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tte-fast", description="Think-Then-Embed runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    # No help flag of its own: ``demo --help`` reaches the demo's parser, which lists its options.
    commands.add_parser(
        "demo", help="think-then-embed over built-in samples (tiny untrained model)", add_help=False
    )
    enc = commands.add_parser("encode", help="embed a JSONL file of inputs into a safetensors file")
    enc.add_argument("--model", required=True, help="checkpoint folder or id")
    enc.add_argument(
        "--inputs",
        required=True,
        help='JSONL: one string or {"text", "image", "instruction"} a line; relative image paths '
        "start at the file's folder",
    )
    enc.add_argument("--output", required=True, help="output .safetensors (traces go to OUTPUT.traces.json)")
    enc.add_argument("--no-think", action="store_true", help="embed without a reasoning trace")
    enc.add_argument(
        "--max-think-tokens", type=int, default=None, help="default: the checkpoint's saved setting, else 256"
    )
    enc.add_argument("--batch-size", type=int, default=8)
    enc.add_argument("--device", default=None)
    enc.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from tte_fast.demo import main as demo_main

        demo_main(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        encode_command(args)


if __name__ == "__main__":
    main(sys.argv[1:])
