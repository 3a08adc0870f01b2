"""Atomic training checkpoints: ``output_dir/checkpoints/step_NNNNNNNN``.

A checkpoint is accelerate's state (trainable weights as safetensors, optimizer, scheduler, every
process's RNG; under FSDP the weights and optimizer are gathered by ``tte_fast.train.sharding``)
plus ``trainer_state.json`` (step, data position, run facts), written into a hidden temporary
folder that is renamed into place only once complete. Old checkpoints are renamed away
before they are deleted. So a run killed at any moment, even mid-write, leaves every complete
checkpoint loadable, and only complete ones are ever found.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from safetensors import safe_open

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def complete_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _NAME.match(name)
        if match and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(root: str) -> str | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def register_trainable_only(accelerator, trainable: list[set[str]]) -> None:
    """Checkpoints hold the trainable weights only (a LoRA run does not copy its frozen base), and
    loading checks that the file holds exactly those."""

    def save_hook(models, weights, output_dir):
        for i, keep in enumerate(trainable[: len(weights)]):
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models, input_dir):
        path = os.path.join(input_dir, MODEL_FILE)
        with safe_open(path, "pt") as f:
            saved = set(f.keys())
        if saved != trainable[0]:
            missing, extra = sorted(trainable[0] - saved)[:5], sorted(saved - trainable[0])[:5]
            raise ValueError(
                f"{input_dir}: the checkpoint's weights do not match this run's trainable parameters "
                f"(missing e.g. {missing}, unexpected e.g. {extra}); resume with the same config"
            )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, root: str, step: int, state: dict, keep: int, sharded=None) -> str:
    """Write the checkpoint of ``step`` atomically (every process calls this) and keep the last ``keep``.
    ``sharded`` (FSDP, ``tte_fast.train.sharding.ShardedState``) writes weights and optimizer that
    accelerate does not hold."""
    final = os.path.join(root, f"step_{step:08d}")
    tmp = os.path.join(root, f".tmp-step_{step:08d}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    if sharded is not None:
        sharded.save(tmp, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(os.path.join(tmp, STATE_FILE), {**state, "step": step})
        _fsync_tree(tmp)
        if os.path.exists(final):
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in complete_checkpoints(root)[:-keep]:
            _remove(old)
        for name in os.listdir(root):  # leftovers of a killed write or removal
            if name.startswith(".") and os.path.join(root, name) != tmp:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str, sharded=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``folder``; returns its trainer state."""
    accelerator.load_state(folder, strict=False)  # the load hook has checked the keys
    if sharded is not None:
        sharded.load(folder, accelerator.is_main_process)
    with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def _remove(folder: str) -> None:
    """Rename out of the checkpoint namespace first, so a half-deleted folder is never found."""
    trash = os.path.join(os.path.dirname(folder), ".del-" + os.path.basename(folder))
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: str) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
