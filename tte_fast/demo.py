"""Think-then-embed over a few built-in sample inputs.

With no arguments it builds the tiny random-weight Qwen2-VL from the config shipped in the package
(untrained: its traces are noise and its similarities carry no meaning); ``--model PATH`` runs a real
checkpoint instead.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch


def sample_image(height: int = 96, width: int = 128) -> np.ndarray:
    """A red disc on a blue-green gradient (HxWx3 uint8), drawn so the demo needs no files."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([np.zeros_like(x), 255 * x // width, 255 * y // height], axis=-1)
    disc = (y - height / 2) ** 2 + (x - width / 2) ** 2 < (min(height, width) / 3) ** 2
    image[disc] = (220, 30, 30)
    return image.astype(np.uint8)


def sample_inputs() -> list:
    return [
        {"image": sample_image(), "instruction": "Represent the given image for retrieval."},
        {
            "image": sample_image(64, 160),
            "text": "What shape is in the middle?",
            "instruction": "Answer retrieval.",
        },
        "A red circle on a colourful background.",
        "A recipe for tomato soup.",
    ]


def similarity_table(embeddings: torch.Tensor, labels: list[str]) -> str:
    sims = embeddings @ embeddings.T
    width = max(len(label) for label in labels)
    lines = [" " * width + "  " + "  ".join(f"{i:>6d}" for i in range(len(labels)))]
    for i, label in enumerate(labels):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:6.3f}" for v in sims[i].tolist()))
    return "\n".join(lines)


def describe(item) -> str:
    if isinstance(item, str):
        return item[:40]
    parts = ["[image]"] if "image" in item else []
    parts.append(item.get("text", item.get("instruction", ""))[:32])
    return " ".join(parts)


def run(model_path: str | None, max_think_tokens: int, device: str | None) -> None:
    from tte_fast import UnifiedTTE

    with tempfile.TemporaryDirectory() as tmp:
        if model_path is None:
            from tte_fast.testing import build_tiny_checkpoint

            print("NOTE: no --model given: using the built-in tiny Qwen2-VL with RANDOM, UNTRAINED weights.")
            print(
                "      Its traces are noise and its similarities mean nothing: it shows the pipeline only.\n"
            )
            model_path = build_tiny_checkpoint("qwen2_vl", tmp)
        model = UnifiedTTE.from_pretrained(model_path, device=device)
        inputs = sample_inputs()
        result = model.encode(inputs, think=True, max_think_tokens=max_think_tokens)

    labels = [f"{i}: {describe(item)}" for i, item in enumerate(inputs)]
    for label, trace, seq in zip(labels, result.traces, result.sequences):
        print(f"{label}\n  trace ({len(seq)} tokens in sequence): {trace!r}\n")
    print(
        f"embeddings: {tuple(result.embeddings.shape)} {result.embeddings.dtype}, "
        f"norms {result.embeddings.norm(dim=-1).tolist()}"
    )
    print("\ncosine similarity\n" + similarity_table(result.embeddings, labels))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint folder or id (default: built-in tiny model)"
    )
    parser.add_argument("--max-think-tokens", type=int, default=24)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    run(args.model, args.max_think_tokens, args.device)


if __name__ == "__main__":
    main()
