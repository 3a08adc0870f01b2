"""A run SIGKILLed while writing a checkpoint leaves the previous one loadable, and ``--resume`` from it
gives exactly the losses and weights of an uninterrupted run (fp32, CPU, LoRA dropout on, two
datasets mixed, so RNG and data position both matter)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.train_cases import example, losses, run_config, weights
from tte_fast.train import parse_config, train
from tte_fast.train.checkpoint import checkpoint_root, complete_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

# Kills the process inside the write of checkpoint ``kill_at``: weights and optimizer are in the
# temporary folder, the trainer state is being written, nothing has been renamed yet.
KILLED_RUN = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import tte_fast.train.checkpoint as ckpt
from tte_fast.train import parse_config, train
raw, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
write = ckpt._write_json
def dying_write(path, data):
    if data["step"] == kill_at:
        with open(path, "w") as f:
            f.write('{"step": ')
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
ckpt._write_json = dying_write
train(parse_config(raw))
"""


def _raw(model, output_dir):
    return run_config(
        "embedder",
        model,
        output_dir,
        data={
            "datasets": [{"path": example("pairs.jsonl")}, {"path": example("mmeb.jsonl"), "format": "mmeb"}]
        },
        train={"steps": 5, "batch_size": 2, "lr": 2e-3, "warmup_steps": 1},
        contrastive={"chunk_size": 1},
        lora={"dropout": 0.1},
        checkpoint={"every": 2, "keep": 2},
    )


def test_sigkill_mid_checkpoint_then_resume_equals_uninterrupted(tiny_checkpoints, tmp_path):
    model = tiny_checkpoints["qwen2_vl"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, json.dumps(_raw(model, killed)), "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    root = checkpoint_root(str(killed))
    assert [step for step, _ in complete_checkpoints(root)] == [2]
    assert any(name.startswith(".tmp-step_00000004") for name in os.listdir(root))  # the torn write

    train(parse_config(_raw(model, killed)), resume=True)
    straight = tmp_path / "straight"
    train(parse_config(_raw(model, straight)))

    want, got = losses(straight), losses(killed)
    assert sorted(got) == [1, 2, 3, 4, 5] and got == want
    a, b = weights(killed / "final"), weights(straight / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not any(name.startswith(".") for name in os.listdir(root))  # leftovers cleaned up
    assert [step for step, _ in complete_checkpoints(root)] == [2, 4]
