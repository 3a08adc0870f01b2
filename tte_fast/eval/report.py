"""Aggregation (per meta-task, per modality, overall), the printed table and the output files.

Averages are over tasks of each task's headline metric, as MMEB-V2 reports them: hit@1 for image
and video tasks, linear NDCG@5 for visual-document tasks. Flagged tasks stay in the averages, and
the table marks them and says how many there are.
"""

from __future__ import annotations

import json
import os

from tte_fast.eval.cache import safe_name

DIGITS = 6


def _rounded(value):
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def aggregate(tasks: dict[str, dict]) -> dict:
    """``{"meta_tasks", "modalities", "overall"}``: mean headline over tasks, with task counts."""

    def group(key):
        out: dict[str, dict] = {}
        for name, t in tasks.items():
            g = out.setdefault(t[key], {"headline": 0.0, "tasks": []})
            g["tasks"].append(name)
        for g in out.values():
            g["headline"] = sum(tasks[n]["headline"] for n in g["tasks"]) / len(g["tasks"])
        return out

    overall = {
        "headline": sum(t["headline"] for t in tasks.values()) / len(tasks) if tasks else 0.0,
        "tasks": len(tasks),
        "flagged": sorted(n for n, t in tasks.items() if t["flags"]),
    }
    return {"meta_tasks": group("meta_task"), "modalities": group("modality"), "overall": overall}


def build_results(tasks: dict[str, dict], model: dict, settings: dict) -> dict:
    return _rounded({"tasks": tasks, **aggregate(tasks), "model": model, "settings": settings})


def format_table(results: dict, timings: dict[str, float] | None = None) -> str:
    """A plain-text table: one row per task, then the meta-task, modality and overall averages."""
    header = ["task", "meta-task", "type", "queries", "cands", "metric", "score", "chance", "flags"]
    if timings:
        header.append("seconds")
    rows = []
    for name, t in results["tasks"].items():
        row = [
            name,
            t["meta_task"],
            t["eval_type"],
            str(t["num_queries"]),
            str(t["num_candidates"]),
            t["headline_metric"],
            f"{100 * t['headline']:.2f}",
            f"{100 * t['chance']:.2f}",
            ",".join(t["flags"]) or "-",
        ]
        if timings:
            row.append(f"{timings.get(name, 0.0):.1f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("")
    for title, key in (("meta-task", "meta_tasks"), ("modality", "modalities")):
        for name, g in results[key].items():
            lines.append(f"{title} {name}: {100 * g['headline']:.2f} ({len(g['tasks'])} tasks)")
    overall = results["overall"]
    lines.append(f"overall: {100 * overall['headline']:.2f} ({overall['tasks']} tasks)")
    if overall["flagged"]:
        lines.append(
            f"WARNING: {len(overall['flagged'])} of {overall['tasks']} tasks flagged "
            "(collapsed: near-identical embeddings; chance: score indistinguishable from a random "
            f"ranking): {', '.join(overall['flagged'])}"
        )
    return "\n".join(lines)


def write_outputs(output_dir: str, results: dict, predictions: dict[str, list[dict]]) -> dict[str, str]:
    """``results.json`` and ``predictions/TASK.jsonl``; returns their paths."""
    os.makedirs(os.path.join(output_dir, "predictions"), exist_ok=True)
    paths = {"results": os.path.join(output_dir, "results.json")}
    with open(paths["results"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    for task, rows in predictions.items():
        path = os.path.join(output_dir, "predictions", f"{safe_name(task)}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"task": task, **row}, ensure_ascii=False) + "\n")
        paths[task] = path
    return paths
