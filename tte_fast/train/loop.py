"""The training loop: setup, then one short loop over steps.

accelerate does the mechanics (device placement, mixed precision, DDP under torchrun, state
save/load); the jobs (``tte_fast.train.jobs``) say what a step computes.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from tte_fast.distributed import all_reduce_sum
from tte_fast.settings.yaml_config import save_config
from tte_fast.train.batches import Renderer, StepBatches
from tte_fast.train.checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    register_trainable_only,
    save_checkpoint,
)
from tte_fast.train.config import RunConfig
from tte_fast.train.encoders import vision_tower
from tte_fast.train.jobs import build_job
from tte_fast.train.models import (
    load_for_training,
    make_trainable,
    resolve_model,
    save_trained,
    trainable_names,
)
from tte_fast.train.progress import StepLog
from tte_fast.train.records import read_dataset
from tte_fast.train.schedule import build_schedule
from tte_fast.train.sharding import ShardedState, full_norm, refuse_accelerate_fsdp, shard, unsharded

CONFIG_FILE = "train_config.yaml"
FINAL_DIR = "final"


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _accelerator(config: RunConfig):
    from accelerate import Accelerator

    from tte_fast.distributed import world

    # Without CUDA, accelerate sets up a torchrun process group (gloo) only when told it runs on CPU.
    cpu = config.train.cpu or not torch.cuda.is_available()
    precision = config.train.mixed_precision
    if precision == "auto":
        precision = "no" if cpu else "bf16"
    if precision == "fp16" and cpu:  # accelerate would quietly train in fp32 (no CPU fp16 autocast)
        raise ValueError("train.mixed_precision: fp16 needs CUDA; on CPU use no or bf16")
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision)
    refuse_accelerate_fsdp(accelerator)
    if world()[1] != accelerator.num_processes:
        raise RuntimeError(
            f"torch.distributed has {world()[1]} processes but accelerate set up {accelerator.num_processes}"
        )
    return accelerator


def _data(config: RunConfig, loaded, accelerator):
    """Records of every dataset, the step schedule, and this process's step batches."""
    datasets, names = [], []
    for d in config.data.datasets:
        records = read_dataset(d.path, d.format, config.job, d.image_root, d.instruction)
        datasets.append(records[: d.max_samples] if d.max_samples else records)
        names.append(d.name or os.path.basename(d.path))
    if config.job == "head" and config.head.traces == "generate":
        from tte_fast.train.traces import fill_traces

        for records in datasets:
            fill_traces(
                records,
                loaded,
                config.output_dir,
                accelerator,
                config.head.max_think_tokens,
                config.head.generate_batch_size,
            )
    per_process = config.train.batch_size
    global_batch = per_process * accelerator.num_processes
    sizes = [len(r) for r in datasets]
    schedule = build_schedule(
        sizes, [d.weight for d in config.data.datasets], global_batch, config.train.steps, config.seed, names
    )
    tte = loaded.tte_config
    embed_token_id = tte.resolve_embed_token(getattr(loaded.processor, "tokenizer", loaded.processor))[1]
    renderer = Renderer(loaded.processor, loaded.vision, tte.prompts, embed_token_id, tte.think_end_token)
    batches = StepBatches(
        config.job,
        datasets,
        schedule,
        accelerator.process_index,
        per_process,
        renderer,
        config.data.bad_data,
        config.data.negatives,
        config.data.max_length,
    )
    facts = {"processes": accelerator.num_processes, "global_batch": global_batch, "dataset_sizes": sizes}
    return batches, facts


@dataclass
class _Run:
    accelerator: object
    loaded: object
    job: object
    module: torch.nn.Module
    optimizer: object
    scheduler: object
    params: list
    batches: StepBatches
    facts: dict
    sharded: ShardedState | None = None  # FSDP: weights and optimizer, which accelerate does not hold
    hf_names: dict | None = None  # FSDP: the HF model's name of each trained parameter


def _param_groups(params: list, hf_model, t) -> list[dict]:
    """One group at ``train.lr``, and the vision tower's parameters at ``train.vision_lr`` if set (the
    schedule scales both alike)."""
    visual = vision_tower(hf_model)
    if t.vision_lr is None or visual is None:
        return [{"params": params}]
    ids = {id(p) for p in visual.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in ids]},
        {"params": [p for p in params if id(p) in ids], "lr": t.vision_lr},
    ]
    return [g for g in groups if g["params"]]


def _setup(config: RunConfig, raw_config: dict | None) -> _Run:
    """Accelerator, model (what trains), data, optimizer and LR schedule of a run."""
    from accelerate.utils import set_seed

    accelerator = _accelerator(config)
    set_seed(config.seed)
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        if raw_config is not None:
            save_config(raw_config, os.path.join(config.output_dir, CONFIG_FILE))
    config.model = resolve_model(config.model, config.output_dir, accelerator)
    loaded = load_for_training(config)
    make_trainable(loaded, config)
    job = build_job(config, loaded, accelerator)
    batches, facts = _data(config, loaded, accelerator)
    t = config.train
    hf_names = shard(job.module, loaded.hf_model, accelerator.device) if t.fsdp else None
    params = [p for p in job.module.parameters() if p.requires_grad]  # sharded ones under FSDP
    optimizer = torch.optim.AdamW(
        _param_groups(params, loaded.hf_model, t), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(t.warmup_steps, t.steps, t.min_lr_ratio)
    )
    accelerator.register_for_checkpointing(scheduler)  # not prepared: accelerate would step it per process
    if t.fsdp:  # sharded already: accelerate would wrap it in DDP and save only the main shard
        sharded = ShardedState(job.module, optimizer, trainable_names(job.module))
        return _Run(
            accelerator,
            loaded,
            job,
            job.module,
            optimizer,
            scheduler,
            params,
            batches,
            facts,
            sharded,
            hf_names,
        )
    module, optimizer = accelerator.prepare(job.module, optimizer)
    register_trainable_only(accelerator, [trainable_names(module)])
    return _Run(accelerator, loaded, job, module, optimizer, scheduler, params, batches, facts)


def _resume(run: _Run, root: str) -> tuple[int, int]:
    """(step, skipped records so far) of the latest checkpoint, its state restored; (0, 0) without one."""
    folder = latest_checkpoint(root)
    if folder is None:
        return 0, 0
    state = load_checkpoint(run.accelerator, folder, run.sharded)
    if state["facts"] != run.facts:
        raise ValueError(f"{folder} was written by a run with {state['facts']}; this run has {run.facts}")
    return state["step"], state["skipped"]


def _global_counts(batch: dict, device) -> list[int]:
    """Samples, tokens and skipped records of this step over all processes."""
    local = torch.tensor([batch["samples"], batch["tokens"], len(batch["skipped"])], device=device)
    return [int(v) for v in all_reduce_sum(local)]


def train(config: RunConfig, resume: bool = False, raw_config: dict | None = None) -> str:
    """Run a job; returns the folder of the trained model (``output_dir/final``)."""
    run, t, root = _setup(config, raw_config), config.train, checkpoint_root(config.output_dir)
    start, skipped = _resume(run, root) if resume else (0, 0)
    main = run.accelerator.is_main_process
    log = StepLog(config.output_dir, start, t.steps, config.log, main, run.accelerator.device)
    loader = DataLoader(
        run.batches,
        batch_size=None,
        sampler=range(start, t.steps),
        num_workers=config.data.num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
    )
    # A prepared module autocasts its own forward; a sharded one is not prepared.
    autocast = run.accelerator.autocast if run.sharded is not None else contextlib.nullcontext
    for step, batch in zip(range(start, t.steps), loader):
        with autocast():
            loss = run.job.step(run.module, batch)
        norm = full_norm(run.accelerator.clip_grad_norm_(run.params, t.max_grad_norm or math.inf))
        lr = run.scheduler.get_last_lr()[0]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        samples, tokens, bad = _global_counts(batch, run.accelerator.device)
        skipped += bad
        log.step(step + 1, float(loss), lr, float(norm), samples, tokens, skipped)
        if config.checkpoint.every and (step + 1) % config.checkpoint.every == 0:
            state = {"skipped": skipped, "facts": run.facts}
            save_checkpoint(run.accelerator, root, step + 1, state, config.checkpoint.keep, run.sharded)
    log.close()
    final = os.path.join(config.output_dir, FINAL_DIR)
    loaded = run.loaded
    if run.sharded is not None:  # gathered by every process into an unsharded copy on the main one
        loaded = unsharded(run.loaded, run.hf_names, run.module, config, main)
    if main:
        save_trained(loaded, final, merge=config.lora.merge)
    run.accelerator.wait_for_everyone()
    return final
