"""Training records, trace-job configs and a vLLM-shaped engine shared by the trace and serve tests."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import yaml
from PIL import Image

from tte_fast.corpus.store import read_table

THINK = 3  # think budget: short traces keep the tests fast


def write_pairs(folder, n: int, bad: bool = True) -> str:
    """``n`` pair records (texts; every third query with an image; the positives of records 4 and
    5 the same text) and, with ``bad``, one whose query image is missing and one whose is corrupt."""
    folder = str(folder)
    pixels = np.random.default_rng(0).integers(0, 256, (28, 42, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, "cat.png"))
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"\x89PNG but not really")
    rows = []
    for i in range(n):
        query = {"text": f"query {i} " + "word " * (i % 3)}
        if i % 3 == 1:
            query["image"] = "cat.png"
        pos = "a shared positive" if i in (4, 5) else f"target {i}"
        rows.append({"query": query, "pos": pos, "negs": [f"negative {i}"]})
    if bad:
        rows.insert(2, {"query": {"image": "nowhere.png", "text": "lost"}, "pos": "missing"})
        rows.append({"query": {"image": "broken.png"}, "pos": "corrupt"})
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def traces_config(folder, model: str, data: str, output: str, **sections) -> dict:
    raw = {
        "reasoner": {"path": model, "device": "cpu"},
        "datasets": [{"path": data}],
        "sides": ["query", "target"],
        "decode": {"max_think_tokens": THINK},
        "batch_size": 4,
        "shard_size": 3,
        "output_dir": output,
        **sections,
    }
    return raw


def write_config(folder, raw: dict) -> str:
    path = os.path.join(str(folder), "traces.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f)
    return path


def sorted_rows(folder) -> list[dict]:
    return read_table(str(folder)).sort_by("id").to_pylist()


class SingleBudgetHF:
    """An engine with one budget per request, as vLLM's ``LLM.generate``: HF greedy ``generate``
    stopping at the stop ids (kept in the output, as vLLM keeps them)."""

    def __init__(self, model):
        self.model = model

    @staticmethod
    def sampling_params(**settings) -> dict:
        return settings

    def generate(self, prompts, settings, use_tqdm=False):
        from types import SimpleNamespace

        assert settings["temperature"] == 0.0 and settings["stop"] == [] and settings["ignore_eos"]
        out = []
        for p in prompts:
            ids = torch.tensor([p["prompt_token_ids"]])
            with torch.inference_mode():
                full = self.model.hf_model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=settings["max_tokens"],
                    do_sample=False,
                    eos_token_id=settings["stop_token_ids"],
                    pad_token_id=self.model.pad_token_id,
                )
            new = full[0, ids.shape[1] :].tolist()
            reason = new[-1] if new and new[-1] in settings["stop_token_ids"] else None
            out.append(
                SimpleNamespace(
                    prompt_token_ids=p["prompt_token_ids"],
                    outputs=[SimpleNamespace(token_ids=new, stop_reason=reason)],
                )
            )
        return out
