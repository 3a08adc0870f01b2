"""``tte-fast eval`` on a tiny Qwen2-VL over one MMEB-V2 image task (instructed rows in a folder of
shards) and one BEIR visual-document task (graded qrels): our outputs and VLM2Vec's layout agree,
and the VLM2Vec files alone give back the headline numbers."""

from __future__ import annotations

import json
import math
import os

import yaml

from tests.eval_fixtures import THINK_TOKENS
from tests.eval_layouts import write_images, write_mmeb_v2_shard, write_parquet_beir
from tte_fast.cli import main


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def ndcg_at_5(prediction, label, grades):
    gain = dict(zip(label, grades))
    dcg = sum(gain.get(c, 0.0) / math.log2(i + 2) for i, c in enumerate(prediction[:5]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades, reverse=True)[:5]))
    return dcg / ideal


def test_eval_writes_our_outputs_and_vlm2vecs(tiny_checkpoints, tmp_path, one_thread):
    data = tmp_path / "data"
    write_images(data)
    write_mmeb_v2_shard(str(data))
    write_parquet_beir(str(data / "docs"))
    config = {
        "model": {"path": tiny_checkpoints["qwen2_vl"], "device": "cpu"},
        "encode": {"batch_size": 4, "max_think_tokens": THINK_TOKENS, "progress": False},
        "tasks": {
            "ImageNet-1K": {"data_path": "ImageNet-1K", "image_root": ".", "meta_task": "classification"},
            "ViDoRe_docs": {"dataset_parser": "beir", "data_path": "docs", "eval_type": "global"},
        },
    }
    (data / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    main(
        [
            "eval",
            str(data / "config.yaml"),
            f"output_dir={out}",
            "tasks.ViDoRe_docs.language=english",
            "--quiet",
        ]
    )

    results = json.loads((out / "results.json").read_text())
    image, docs = results["tasks"]["ImageNet-1K"], results["tasks"]["ViDoRe_docs"]
    assert (image["modality"], image["headline_metric"]) == ("image", "hit@1")
    assert (docs["modality"], docs["headline_metric"], docs["num_queries"]) == ("visdoc", "ndcg_linear@5", 2)
    assert "f1@5" in image["metrics"]

    folder = out / "vlm2vec"
    report = json.loads((folder / "all_scores.json").read_text())
    assert list(report) == ["metadata", "metrics"]
    assert report["metadata"]["model_name"] == os.path.basename(tiny_checkpoints["qwen2_vl"])
    assert set(report["metrics"]) == {"image", "visdoc"}
    for modality, name, ours in (("image", "ImageNet-1K", image), ("visdoc", "ViDoRe_docs", docs)):
        scores = json.loads((folder / f"{name}_score.json").read_text())
        assert report["metrics"][modality][name] == scores
        assert scores["num_pred"] == scores["num_data"] == ours["num_queries"]
        assert scores["ndcg_exponential@5"] == ours["metrics"]["ndcg_exp@5"]
        assert scores["hit@1"] == ours["metrics"]["hit@1"] and "f1@10" in scores

    # The predictions alone give the headlines back (the corpus of 4 is ranked whole).
    preds = read_jsonl(folder / "ViDoRe_docs_pred.jsonl")
    assert [(p["label"], p["rel_scores"]) for p in preds] == [(["10", "11"], [2.0, 1.0]), (["12"], [2.0])]
    assert all(len(p["prediction"]) == 4 for p in preds)
    recomputed = sum(ndcg_at_5(p["prediction"], p["label"], p["rel_scores"]) for p in preds) / len(preds)
    assert abs(recomputed - docs["headline"]) < 1e-6
    preds = read_jsonl(folder / "ImageNet-1K_pred.jsonl")
    hits = [p["prediction"][0] in p["label"] for p in preds]
    assert len(preds) == 3 and abs(sum(hits) / 3 - image["headline"]) < 1e-6
