"""The minibench pipeline: generate the data, build the base model, train the four variants through
``tte-fast train`` and score them through ``tte-fast eval`` with the shipped configs.

Layout of a run folder::

    data/       the generated benchmark (tte_fast.minibench.writer)
    base/       the untrained base checkpoint (tte_fast.minibench.base)
    configs/    the shipped train / eval configs, copied (every step can be re-run by hand from here)
    runs/NAME/  training outputs (final/ is the trained model): baseline, embedder, reasoner, head
    eval/NAME/  evaluation outputs per variant (results.json, predictions/, cache/)
    minibench.json  the summary (tte_fast.minibench.report)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor

from tte_fast.minibench.report import summarize
from tte_fast.minibench.writer import generate, read_teacher

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
CONFIG_FILES = ("baseline.yaml", "embedder.yaml", "reasoner.yaml", "head.yaml", "eval.yaml")
# Per profile: data size and overrides of the shipped configs (the "full" profile is the files as is).
PROFILES = {
    "full": {"size": "full", "train": {}, "eval": []},
    "fast": {
        "size": "fast",
        "train": {
            "baseline": ["train.steps=240", "train.batch_size=16", "train.warmup_steps=10"],
            "embedder": ["train.steps=240", "train.batch_size=16", "train.warmup_steps=10"],
            "reasoner": ["train.steps=480", "train.batch_size=16", "train.warmup_steps=10"],
            "head": ["train.steps=160", "train.batch_size=16", "train.warmup_steps=10"],
        },
        "eval": ["encode.batch_size=40"],
    },
}
# The baseline trains here while the embedder (TTE_t's, which no other variant starts from) trains
# beside it in a second process, each on its share of threads; the reasoner (from the baseline) and
# the head (from the reasoner) then train alone on both shares. Fixed thread counts per job keep a
# run's arithmetic, and so its scores, the same on any machine with the same BLAS kernels.
FIRST, BESIDE, THEN = "baseline", "embedder", ("reasoner", "head")


@contextlib.contextmanager
def _torch_threads(count: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _log(message: str) -> None:
    print(f"[minibench] {message}", flush=True)


def prepare(root: str, seed: int, size: str) -> None:
    """Data, base model and configs under ``root`` (kept when already there for this seed and size)."""
    from tte_fast.minibench.base import build_base

    manifest = os.path.join(root, "data", "manifest.json")
    current = None
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            current = json.load(f)
    if current is None or (current.get("seed"), current.get("size")) != (seed, size):
        shutil.rmtree(os.path.join(root, "data"), ignore_errors=True)
        generate(os.path.join(root, "data"), seed, size)
    if not os.path.exists(os.path.join(root, "base", "model.safetensors")):
        build_base(os.path.join(root, "base"), seed=seed)
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)
    for name in CONFIG_FILES:
        shutil.copyfile(os.path.join(CONFIG_DIR, name), os.path.join(root, "configs", name))


def train_variant(root: str, name: str, seed: int, overrides: list[str]) -> str:
    """``tte-fast train configs/NAME.yaml`` with the run's paths; returns the trained model folder."""
    from tte_fast.train.cli import main as train_main

    final = os.path.join(root, "runs", name, "final")
    shutil.rmtree(os.path.join(root, "runs", name), ignore_errors=True)
    start = {"head": "reasoner", "reasoner": "baseline"}.get(name)  # what the job starts from
    model = os.path.join(root, "runs", start, "final") if start else os.path.join(root, "base")
    config = os.path.join(root, "configs", "baseline.yaml" if name == "baseline" else f"{name}.yaml")
    args = [config, f"model={model}", f"output_dir={os.path.join(root, 'runs', name)}", f"seed={seed}"]
    train_main(args + overrides)
    return final


def _timed_training(root: str, name: str, seed: int, overrides: list[str], threads: int) -> float:
    """``train_variant`` on ``threads`` torch threads (here or in the worker process); its seconds."""
    _log(f"training {name}")
    with _torch_threads(threads):
        start = time.perf_counter()
        train_variant(root, name, seed, overrides)
        return time.perf_counter() - start


def train_all(root: str, seed: int, overrides: dict[str, list[str]], timings: dict, threads: int) -> None:
    """Every variant's training: the baseline and the embedder at once (``threads`` torch threads
    each, the embedder in a spawned process), then the reasoner and the head on ``2 * threads``."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        beside = pool.submit(_timed_training, root, BESIDE, seed, overrides.get(BESIDE, []), threads)
        timings[f"train_{FIRST}"] = _timed_training(root, FIRST, seed, overrides.get(FIRST, []), threads)
        timings[f"train_{BESIDE}"] = beside.result()  # raises the worker's error, if any
    for name in THEN:
        timings[f"train_{name}"] = _timed_training(root, name, seed, overrides.get(name, []), 2 * threads)


def _eval_args(root: str, variant: str) -> list[str]:
    runs = os.path.join(root, "runs")
    out = [f"output_dir={os.path.join(root, 'eval', variant)}"]
    if variant == "baseline":
        return out + [f"model.path={runs}/baseline/final", "encode.think_queries=false"]
    if variant == "TTE_t":
        return out + [f"model.path={runs}/embedder/final"]
    if variant == "TTE_s":
        return out + [
            "model.path=null",
            f"model.reasoner={runs}/reasoner/final",
            f"model.embedder={runs}/embedder/final",
        ]
    return out + [f"model.path={runs}/head/final"]


def seed_teacher_traces(root: str, args: list[str]) -> None:
    """TTE_t's reasoner is the teacher: put its test traces into the evaluation's trace cache (keyed
    as the evaluation keys them), so ``tte-fast eval`` embeds them instead of thinking."""
    from tte_fast.eval import ModelRunner, load_model, parse_config, read_task
    from tte_fast.eval.cache import TraceCache
    from tte_fast.eval.fingerprint import input_fingerprint
    from tte_fast.settings.yaml_config import load_config

    path = os.path.join(root, "configs", "eval.yaml")
    config = parse_config(load_config(path, args), base_dir=os.path.dirname(path))
    runner = ModelRunner(load_model(config.model, config.cache_path), config.encode, config.cache_path)
    fingerprint = runner.trace_fingerprint("query")
    for task in config.tasks:
        data = read_task(task, config.base_dir)
        teacher = read_teacher(os.path.join(root, "data"), "test", task.name)
        traces = {input_fingerprint(q): teacher[i] for q, i in zip(data.queries, data.query_ids)}
        TraceCache(config.cache_path, task.name, "query", fingerprint).save(traces)


def eval_variant(root: str, variant: str, overrides: list[str]) -> dict:
    """``tte-fast eval configs/eval.yaml`` for one variant; returns its results and wall time."""
    from tte_fast.eval.cli import main as eval_main

    args = _eval_args(root, variant) + overrides
    shutil.rmtree(os.path.join(root, "eval", variant), ignore_errors=True)
    if variant == "TTE_t":
        seed_teacher_traces(root, args)
    start = time.perf_counter()
    results = eval_main([os.path.join(root, "configs", "eval.yaml"), *args, "--quiet"])
    return {"results": results, "seconds": time.perf_counter() - start}


def run(
    root: str,
    seed: int = 0,
    profile: str = "full",
    steps: tuple[str, ...] = ("train", "eval"),
    threads: int = 1,
) -> dict:
    """The whole pipeline; returns (and writes to ``root/minibench.json``) the summary. ``threads``:
    torch threads of each of the two trainings that run at once (the later ones and the evaluations
    take twice as many)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    spec, root, timings = PROFILES[profile], os.path.abspath(root), {}
    start = time.perf_counter()
    prepare(root, seed, spec["size"])
    timings["prepare"] = time.perf_counter() - start
    if "train" in steps:
        t = time.perf_counter()
        train_all(root, seed, spec["train"], timings, threads)
        timings["train"] = time.perf_counter() - t
    evaluations = {}
    if "eval" in steps:
        with _torch_threads(2 * threads):
            for variant in ("baseline", "TTE_t", "TTE_s", "TTE_u"):
                _log(f"evaluating {variant}")
                evaluations[variant] = eval_variant(root, variant, spec["eval"])
                timings[f"eval_{variant}"] = evaluations[variant]["seconds"]
    timings["total"] = time.perf_counter() - start
    summary = summarize(root, evaluations, timings, {"seed": seed, "profile": profile})
    with open(os.path.join(root, "minibench.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


def export_model(root: str, destination: str) -> str:
    """Copy the trained unified model (TTE_u) to ``destination`` with the run's scores beside it and
    the baseline embedder in its ``baseline`` folder (the demo compares the two)."""
    from tte_fast.demo import BASELINE_DIR

    runs = os.path.join(os.path.abspath(root), "runs")
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(os.path.join(runs, "head", "final"), destination)
    shutil.copytree(os.path.join(runs, "baseline", "final"), os.path.join(destination, BASELINE_DIR))
    summary = os.path.join(os.path.abspath(root), "minibench.json")
    if os.path.exists(summary):
        shutil.copyfile(summary, os.path.join(destination, "minibench.json"))
    return destination
