"""Think-then-embed on a few queries of the miniature benchmark (tte_fast.minibench).

With no arguments it loads the unified model the package ships (a small Qwen2-VL trained by
``tte-fast minibench``: an SFT'd reasoner with a TTE_u head). For each query it prints the trace
the model writes, then embeds the query from its generation cache, ranks the query's candidates by
cosine similarity and says whether the top one is the right answer. ``--model PATH`` runs another
checkpoint on the same queries.
"""

from __future__ import annotations

import argparse
import os

import torch

PACKAGED_MODEL = os.path.join(os.path.dirname(__file__), "minibench", "model")


def demo_queries(per_task: int, seed: int = 0) -> list:
    """The first ``per_task`` test-split examples of every minibench task (regenerated from the seed)."""
    from tte_fast.minibench.tasks import TASKS, make_examples
    from tte_fast.minibench.writer import SIZES, split_rng

    examples = []
    for task in TASKS:
        count = max(per_task, 1)
        examples += make_examples(task, min(count, SIZES["full"]["test"]), split_rng(seed, "test", task))[
            :per_task
        ]
    return examples


def _query_input(example) -> dict:
    from tte_fast.minibench.scenes import render_scene
    from tte_fast.minibench.tasks import TASKS

    item = {"text": example.text, "instruction": TASKS[example.task][1]}
    if example.scene is not None:
        item["image"] = render_scene(example.scene)
    return item


def _candidate(c) -> tuple[str, object]:
    """(label, encode input) of a candidate."""
    from tte_fast.minibench.scenes import render_crop, render_scene

    if c.scene is not None:
        names = ", ".join("-" if n == "empty" else n for n in c.scene.cell_names())
        return f"[picture: {names}]", {"image": render_scene(c.scene)}
    if c.crop is not None:
        return f"[crop: {c.crop.name}]", {"image": render_crop(c.crop)}
    return c.text, c.text


def _describe_query(example) -> str:
    picture = ""
    if example.scene is not None:
        names = ", ".join("-" if n == "empty" else n for n in example.scene.cell_names())
        picture = f" [picture: {names}]"
    return f"{example.task}: {example.text}{picture}"


def run(model_path: str | None, max_think_tokens: int | None, device: str | None, per_task: int) -> int:
    """Print the demo; returns the number of hits."""
    from tte_fast import UnifiedTTE

    if model_path is None:
        if not os.path.exists(os.path.join(PACKAGED_MODEL, "config.json")):
            raise SystemExit(
                "the packaged minibench model is missing: build it with "
                "`tte-fast minibench --export tte_fast/minibench/model`, or pass --model PATH"
            )
        model_path = PACKAGED_MODEL
        print("model: the packaged minibench unified model (Qwen2-VL, SFT'd reasoner + TTE_u head)\n")
    model = UnifiedTTE.from_pretrained(model_path, device=device, dtype=torch.float32)
    examples = demo_queries(per_task)
    result = model.encode([_query_input(e) for e in examples], think=True, max_think_tokens=max_think_tokens)
    hits = 0
    for example, embedding, trace in zip(examples, result.embeddings, result.traces):
        labels, inputs = zip(*(_candidate(c) for c in example.candidates))
        candidates = model.encode(list(inputs), side="target").embeddings
        scores = candidates @ embedding
        best = int(scores.argmax())
        hit = best == 0  # the positive is the first candidate
        hits += hit
        print(_describe_query(example))
        print("  trace: " + trace.replace("\n", "\n         "))
        verdict = "HIT" if hit else "MISS"
        print(f"  retrieved: {labels[best]} ({scores[best]:.3f})  expected: {labels[0]}  -> {verdict}")
        print(f"  teacher:   {example.body}\n")
    print(f"{hits} of {len(examples)} queries retrieved their answer")
    return hits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder or id (default: the packaged model)")
    parser.add_argument("--max-think-tokens", type=int, default=None, help="default: the model's setting")
    parser.add_argument("--per-task", type=int, default=2, help="test queries per task")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    run(args.model, args.max_think_tokens, args.device, args.per_task)


if __name__ == "__main__":
    main()
