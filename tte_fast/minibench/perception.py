"""The perception score: how much of the picture a variant's query traces name correctly.

Every trace about a picture starts with the teacher's perception step, ``from left to right: red
circle marked C, empty, ...``. A cell counts as right when the trace names it exactly as the teacher
does (empty, or colour, shape and letter all right); colour, shape and letter are also scored alone
over the cells that hold a shape (letters over the labelled ones). The teacher scores 100% by
construction; a trace with no perception step names no cell right.
"""

from __future__ import annotations

import glob
import json
import os
import re

PERCEPTION = re.compile(r"from left to right: (.*?)\.")
PARTS = ("cells", "colour", "shape", "letter")


def perceived_cells(trace: str) -> list[str] | None:
    """The cell names a trace's perception step lists, or None when it has none."""
    match = PERCEPTION.search(trace)
    return match.group(1).split(", ") if match else None


def _parts(name: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, letter) of a cell name: ``red circle marked C`` or ``empty``."""
    words = name.split()
    if len(words) < 2 or words[0] == "empty":
        return None, None, None
    letter = words[3] if len(words) == 4 and words[2] == "marked" else None
    return words[0], words[1], letter


def score(pairs: list[tuple[str, str]]) -> dict:
    """Shares of cells (and of colours, shapes, letters) that each student trace names as its teacher
    trace does, over the ``(student, teacher)`` pairs whose teacher trace has a perception step."""
    right = dict.fromkeys(PARTS, 0)
    total = dict.fromkeys(PARTS, 0)
    for student, teacher in pairs:
        truth = perceived_cells(teacher)
        if truth is None:
            continue
        named = perceived_cells(student) or []
        named = named + [""] * (len(truth) - len(named))
        for got, want in zip(named, truth):
            total["cells"] += 1
            right["cells"] += got == want
            for part, g, w in zip(PARTS[1:], _parts(got), _parts(want)):
                if w is not None:
                    total[part] += 1
                    right[part] += g == w
    return {part: right[part] / total[part] if total[part] else None for part in PARTS} | {
        "scored_cells": total["cells"]
    }


def variant_pairs(root: str, variant: str) -> list[tuple[str, str]]:
    """(the variant's query trace, the teacher's) for every test query the variant thought about,
    read from its evaluation's trace cache."""
    from tte_fast.eval import parse_config, read_task
    from tte_fast.eval.cache import safe_name
    from tte_fast.eval.fingerprint import input_fingerprint
    from tte_fast.minibench.writer import read_teacher
    from tte_fast.settings.yaml_config import load_config

    path = os.path.join(root, "configs", "eval.yaml")
    config = parse_config(load_config(path, []), base_dir=os.path.dirname(path))
    pairs = []
    for task in config.tasks:
        traces = {}
        for cache in glob.glob(
            os.path.join(root, "eval", variant, "cache", safe_name(task.name), "query-traces-*.json")
        ):
            with open(cache, encoding="utf-8") as f:
                traces.update(json.load(f)["traces"])
        data = read_task(task, config.base_dir)
        teacher = read_teacher(os.path.join(root, "data"), "test", task.name)
        for query, query_id in zip(data.queries, data.query_ids):
            trace = traces.get(input_fingerprint(query))
            if trace is not None:
                pairs.append((trace, teacher[query_id]))
    return pairs
