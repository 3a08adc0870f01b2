"""Think-then-embed on a few queries of the miniature benchmark (tte_fast.minibench).

With no arguments it loads the unified model the package ships (a small Qwen2-VL trained by
``tte-fast minibench``: an SFT'd reasoner with a TTE_u head). For each query it prints the trace
the model writes beside the teacher's, then embeds the query from its generation cache, ranks the
query's candidates by cosine similarity and says whether the top one is the right answer (HIT or
MISS), beside the same verdict for the baseline: the embedder trained without traces (shipped in the
model's ``baseline`` folder), which embeds the query without thinking. ``--model PATH`` runs
another checkpoint on the same queries.
"""

from __future__ import annotations

import argparse
import os

import torch

PACKAGED_MODEL = os.path.join(os.path.dirname(__file__), "minibench", "model")
BASELINE_DIR = "baseline"  # the baseline embedder, shipped inside the model folder


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


def _load(path: str, device: str | None):
    from tte_fast import UnifiedTTE

    return UnifiedTTE.from_pretrained(path, device=device, dtype=torch.float32)


def _retrieve(model, example, query: torch.Tensor) -> tuple[int, float]:
    """(index, cosine) of the candidate ``model`` ranks first for a query embedding."""
    inputs = [_candidate(c)[1] for c in example.candidates]
    scores = model.encode(inputs, side="target", progress=False).embeddings @ query
    best = int(scores.argmax())
    return best, float(scores[best])


def _verdict(example, best: int, score: float) -> str:
    label = _candidate(example.candidates[best])[0]
    return f"{label} ({score:.3f}) -> {'HIT' if best == 0 else 'MISS'}"  # the positive comes first


def run(
    model_path: str | None,
    max_think_tokens: int | None,
    device: str | None,
    per_task: int,
    baseline_path: str | None = None,
) -> int:
    """Print the demo; returns the number of hits with thinking. The baseline (an embedder trained
    without traces) ranks the same candidates beside it: ``baseline_path``, or the ``baseline``
    folder beside the model's weights when there is one."""
    if model_path is None:
        if not os.path.exists(os.path.join(PACKAGED_MODEL, "config.json")):
            raise SystemExit(
                "the packaged minibench model is missing: build it with "
                "`tte-fast minibench --export tte_fast/minibench/model`, or pass --model PATH"
            )
        model_path = PACKAGED_MODEL
        print("model: the packaged minibench unified model (Qwen2-VL, SFT'd reasoner + TTE_u head)")
    if baseline_path is None and os.path.exists(os.path.join(model_path, BASELINE_DIR, "config.json")):
        baseline_path = os.path.join(model_path, BASELINE_DIR)
    model = _load(model_path, device)
    baseline = _load(baseline_path, device) if baseline_path else None
    if baseline is not None:
        print("beside it: the baseline embedder (trained without traces), queries embedded without thinking")
    print()
    examples = demo_queries(per_task)
    queries = [_query_input(e) for e in examples]
    result = model.encode(queries, think=True, max_think_tokens=max_think_tokens)
    bare = baseline.encode(queries, think=False, progress=False).embeddings if baseline else None
    hits = baseline_hits = 0
    for i, (example, trace) in enumerate(zip(examples, result.traces)):
        best, score = _retrieve(model, example, result.embeddings[i])
        hits += best == 0
        print(_describe_query(example))
        print("  student: " + trace.replace("\n", "\n           "))
        print(f"  teacher: {example.body}")
        print(f"  expected:  {_candidate(example.candidates[0])[0]}")
        print(f"  thinking:  {_verdict(example, best, score)}")
        if baseline is not None:
            best, score = _retrieve(baseline, example, bare[i])
            baseline_hits += best == 0
            print(f"  baseline:  {_verdict(example, best, score)}")
        print()
    summary = f"{hits} of {len(examples)} queries retrieved their answer with thinking"
    if baseline is not None:
        summary += f", {baseline_hits} of {len(examples)} with the baseline"
    print(summary)
    return hits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder or id (default: the packaged model)")
    parser.add_argument(
        "--baseline", default=None, help="embedder without thinking to compare (default: MODEL/baseline)"
    )
    parser.add_argument("--max-think-tokens", type=int, default=None, help="default: the model's setting")
    parser.add_argument("--per-task", type=int, default=2, help="test queries per task")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    run(args.model, args.max_think_tokens, args.device, args.per_task, args.baseline)


if __name__ == "__main__":
    main()
