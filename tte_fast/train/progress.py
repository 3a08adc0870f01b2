"""Per-step metrics: a tqdm bar and ``log.jsonl`` (loss, lr, grad norm, samples/s, tokens/s, peak memory)."""

from __future__ import annotations

import json
import os
import resource
import time

import torch
from tqdm.auto import tqdm

LOG_FILE = "log.jsonl"


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepLog:
    """Written by the main process only. Resuming at step s keeps the records of steps <= s, so the
    file reads as one run however often it was interrupted."""

    def __init__(self, output_dir: str, start: int, total: int, options, main: bool, device: torch.device):
        self.path = os.path.join(output_dir, LOG_FILE)
        self.every, self.main, self.device = options.every, main, device
        disable = not (main and options.progress)
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=disable)
        self.last = time.perf_counter()
        if main:
            kept = []
            if start and os.path.exists(self.path):
                with open(self.path, encoding="utf-8") as f:
                    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start]
            with open(self.path, "w", encoding="utf-8") as f:
                f.writelines(kept)

    def step(
        self, step: int, loss: float, lr: float, grad_norm: float, samples: int, tokens: int, skipped: int
    ):
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds,
            "peak_memory_mib": peak_memory_mib(self.device),
            "skipped": skipped,
        }
        if not self.main:
            return record
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", gnorm=f"{grad_norm:.3f}")
        if step % self.every == 0:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def close(self) -> None:
        self.bar.close()
