"""The results again in VLM2Vec's layout, so its score-gathering scripts and leaderboard files read them.

Under ``OUTPUT_DIR/vlm2vec/``:

- ``{task}_score.json``: the task's metrics under VLM2Vec's names (``hit@1``, ``ndcg_linear@5``,
  ``ndcg_exponential@5``, ``f1@5``, ...) plus ``num_pred`` and ``num_data``;
- ``{task}_pred.jsonl``: per query ``prediction`` (the ranked candidate ids, our top_k of them),
  ``label`` (the relevant ids) and ``rel_scores`` (their grades);
- ``all_scores.json``: ``{"metadata": {"model_name", "report_generated_date"}, "metrics": {modality:
  {task: scores}}}``, the layout of VLM2Vec's published all_scores files.
"""

from __future__ import annotations

import datetime
import json
import os

from tte_fast.eval.cache import safe_name

FOLDER = "vlm2vec"
# Our metric names that VLM2Vec spells differently.
RENAMED = {"ndcg_exp": "ndcg_exponential"}


def vlm2vec_metric(name: str) -> str:
    metric, k = name.split("@")
    return f"{RENAMED.get(metric, metric)}@{k}"


def task_scores(summary: dict) -> dict:
    """A task's ``{task}_score.json`` content from its entry in ``results.json``."""
    scores = {vlm2vec_metric(name): value for name, value in summary["metrics"].items()}
    scores["num_pred"] = scores["num_data"] = summary["num_queries"]
    return scores


def task_predictions(rows: list[dict]) -> list[dict]:
    return [
        {
            "prediction": row["ranked"],
            "label": list(row["relevant"]),
            "rel_scores": list(row["relevant"].values()),
        }
        for row in rows
    ]


def write_vlm2vec_outputs(
    output_dir: str, results: dict, predictions: dict[str, list[dict]], model_name: str
) -> dict[str, str]:
    """Write the files above; returns their paths (``all_scores`` and ``TASK_score`` / ``TASK_pred``)."""
    folder = os.path.join(output_dir, FOLDER)
    os.makedirs(folder, exist_ok=True)
    paths, by_modality = {}, {}
    for task, summary in results["tasks"].items():
        scores = task_scores(summary)
        by_modality.setdefault(summary["modality"], {})[task] = scores
        paths[f"{task}_score"] = os.path.join(folder, f"{safe_name(task)}_score.json")
        with open(paths[f"{task}_score"], "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=4)
        paths[f"{task}_pred"] = os.path.join(folder, f"{safe_name(task)}_pred.jsonl")
        with open(paths[f"{task}_pred"], "w", encoding="utf-8") as f:
            for row in task_predictions(predictions.get(task, [])):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report = {
        "metadata": {
            "model_name": model_name,
            "report_generated_date": datetime.datetime.now().isoformat(),
        },
        "metrics": by_modality,
    }
    paths["all_scores"] = os.path.join(folder, "all_scores.json")
    with open(paths["all_scores"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=4, ensure_ascii=False)
    return paths
