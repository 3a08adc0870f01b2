"""Shared by the training tests: run configs over the example dataset in examples/train."""

from __future__ import annotations

import copy
import json
import os

import torch
from safetensors.torch import load_file

from tte_fast.train.config import parse_config

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train")


def example(name: str) -> str:
    return os.path.join(EXAMPLES, name)


def run_config(job: str, model: str, output_dir: str, **sections) -> dict:
    """A small raw config for ``job`` on the example data; ``sections`` update it (dicts merge)."""
    data = example("sft.jsonl" if job == "reasoner" else "pairs.jsonl")
    raw = {
        "job": job,
        "model": model,
        "output_dir": str(output_dir),
        "data": {"datasets": [{"path": data}]},
        "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "mixed_precision": "no"},
        "contrastive": {"chunk_size": 2},
        "head": {"layers": 2},
        "log": {"progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **copy.deepcopy(value)}
        else:
            raw[key] = copy.deepcopy(value)
    return raw


def config(job: str, model: str, output_dir: str, **sections):
    return parse_config(run_config(job, model, output_dir, **sections))


def full_finetune_job(job: str, model: str, output_dir: str, **sections):
    """(loaded model, Job) of a ``job`` run with every weight trainable, the vision tower included,
    built as ``tte-fast train`` builds it on CPU."""
    from accelerate import Accelerator

    from tte_fast.train.jobs import build_job
    from tte_fast.train.models import load_for_training, make_trainable

    sections = {"lora": {"enabled": False}, **sections}
    sections["train"] = {"freeze_vision": False, **sections.get("train", {})}
    cfg = config(job, model, output_dir, **sections)
    loaded = load_for_training(cfg)
    make_trainable(loaded, cfg)
    return loaded, build_job(cfg, loaded, Accelerator(cpu=True))


def losses(output_dir: str) -> dict[int, float]:
    with open(os.path.join(output_dir, "log.jsonl"), encoding="utf-8") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def weights(folder: str) -> dict[str, torch.Tensor]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update({f"{name}:{k}": v for k, v in load_file(os.path.join(folder, name)).items()})
    return out


def write_mixed_records(path) -> str:
    """Two contrastive records, one with images and one text-only: split over two processes, one
    process sees no image in a step while the other does."""
    rows = [
        {
            "query": {"image": example("images/red_square.png"), "text": "red"},
            "pos": {"image": example("images/blue_circle.png")},
        },
        {"query": "a text-only query", "pos": "a text-only target"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def embedder_run(model, output_dir, data, batch_size):
    """An embedder run of two steps over ``data`` (one GradCache chunk a sample), vision trainable."""
    return run_config(
        "embedder",
        model,
        output_dir,
        data={"datasets": [{"path": data}]},
        train={"steps": 2, "batch_size": batch_size, "lr": 1e-4, "freeze_vision": False},
        lora={"enabled": False},
        contrastive={"chunk_size": 1},
    )
