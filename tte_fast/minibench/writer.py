"""Writing the benchmark's splits to a folder: images as PNG, the training split as training JSONL
records (docs/train.md), the validation and test splits in the evaluation's ``tte`` layout
(docs/eval.md) with the teacher's traces beside them.

```
images/queries/SPLIT/TASK/N.png   query pictures
images/scenes/KEY.png             candidate pictures (one file per distinct scene)
images/crops/COLOUR_SHAPE.png     grounding candidates
train/TASK.jsonl                  embedder records with the teacher's query_trace
train/TASK.plain.jsonl            the same records without traces (the baseline)
train/TASK.sft.jsonl              reasoner records (input, trace, answer)
SPLIT/TASK/{queries,corpus,qrels,teacher}.jsonl   val and test tasks; teacher: query id -> trace
manifest.json                     seed, sizes, tasks
```
Every path in a record is relative to the folder, which is the image root of every config.
"""

from __future__ import annotations

import json
import os
import random

from tte_fast.minibench.scenes import Scene, Thing, render_crop, render_scene
from tte_fast.minibench.tasks import TASKS, Candidate, Example, make_examples

SIZES = {  # examples per task and split
    "fast": {"train": 192, "val": 16, "test": 100},
    "full": {"train": 1536, "val": 64, "test": 200},
}
EVAL_SPLITS = ("val", "test")


def split_rng(seed: int, split: str, task: str) -> random.Random:
    return random.Random(f"minibench/{seed}/{split}/{task}")  # str seeds hash the same in every process


class _Images:
    """Saves each distinct picture once and returns its path relative to the root."""

    def __init__(self, root: str):
        self.root, self.saved = root, set()

    def _save(self, rel: str, render) -> str:
        if rel not in self.saved:
            path = os.path.join(self.root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            render().save(path, format="PNG")
            self.saved.add(rel)
        return rel

    def query(self, split: str, task: str, index: int, scene: Scene) -> str:
        return self._save(f"images/queries/{split}/{task}/{index:05d}.png", lambda: render_scene(scene))

    def scene(self, scene: Scene) -> str:
        return self._save(f"images/scenes/{scene.key()}.png", lambda: render_scene(scene))

    def crop(self, thing: Thing) -> str:
        return self._save(f"images/crops/{thing.colour}_{thing.shape}.png", lambda: render_crop(thing))


def _write_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def _candidate(images: _Images, c: Candidate) -> tuple[str, dict]:
    """(corpus id, input) of a candidate."""
    if c.scene is not None:
        return f"scene:{c.scene.key()}", {"image": images.scene(c.scene)}
    if c.crop is not None:
        return f"crop:{c.crop.colour}_{c.crop.shape}", {"image": images.crop(c.crop)}
    return f"text:{c.text}", {"text": c.text}


def _query(images: _Images, split: str, index: int, ex: Example) -> dict:
    item = {"text": ex.text, "instruction": TASKS[ex.task][1]}
    if ex.scene is not None:
        item["image"] = images.query(split, ex.task, index, ex.scene)
    return item


def write_train(root: str, images: _Images, task: str, examples: list[Example]) -> None:
    pairs, plain, sft = [], [], []
    for i, ex in enumerate(examples):
        query = _query(images, "train", i, ex)
        pos = _candidate(images, ex.candidates[0])[1]
        # one hard negative, cycling through the candidates (the first ones are the hardest)
        negs = [_candidate(images, ex.candidates[1 + i % (len(ex.candidates) - 1)])[1]]
        plain.append({"query": query, "pos": pos, "negs": negs})
        pairs.append({**plain[-1], "query_trace": ex.trace})
        sft.append({"input": query, "trace": ex.body, "answer": ex.answer})
    _write_jsonl(os.path.join(root, "train", f"{task}.jsonl"), pairs)
    _write_jsonl(os.path.join(root, "train", f"{task}.plain.jsonl"), plain)
    _write_jsonl(os.path.join(root, "train", f"{task}.sft.jsonl"), sft)


def write_eval(root: str, images: _Images, split: str, task: str, examples: list[Example]) -> None:
    queries, corpus, qrels, teacher = [], {}, [], []
    for i, ex in enumerate(examples):
        qid = f"{task}-{split}-{i:05d}"
        ids = []
        for c in ex.candidates:
            cid, item = _candidate(images, c)
            corpus.setdefault(cid, {"id": cid, **item})
            ids.append(cid)
        queries.append({"id": qid, **_query(images, split, i, ex), "candidates": ids})
        qrels.append({"query_id": qid, "corpus_id": ids[0], "relevance": 1})
        teacher.append({"query_id": qid, "trace": ex.trace, "answer": ex.answer})
    folder = os.path.join(root, split, task)
    _write_jsonl(os.path.join(folder, "queries.jsonl"), queries)
    _write_jsonl(os.path.join(folder, "corpus.jsonl"), [corpus[k] for k in sorted(corpus)])
    _write_jsonl(os.path.join(folder, "qrels.jsonl"), qrels)
    _write_jsonl(os.path.join(folder, "teacher.jsonl"), teacher)


def generate(root: str, seed: int = 0, size: str = "full") -> dict:
    """Write every split of every task under ``root``; the same seed and size give the same files."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    os.makedirs(root, exist_ok=True)
    images = _Images(root)
    for task in TASKS:
        for split, count in SIZES[size].items():
            examples = make_examples(task, count, split_rng(seed, split, task))
            if split == "train":
                write_train(root, images, task, examples)
            else:
                write_eval(root, images, split, task, examples)
    manifest = {
        "seed": seed,
        "size": size,
        "counts": SIZES[size],
        "tasks": {k: v[0] for k, v in TASKS.items()},
    }
    with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def read_teacher(root: str, split: str, task: str) -> dict[str, str]:
    """Query id -> teacher trace (think prefix included) of an evaluation split's task."""
    with open(os.path.join(root, split, task, "teacher.jsonl"), encoding="utf-8") as f:
        return {row["query_id"]: row["trace"] for row in map(json.loads, f)}
