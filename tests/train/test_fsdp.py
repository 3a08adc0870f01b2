"""FSDP2 (``train.fsdp: true``): two gloo processes sharding the fully fine-tuned embedder train what one
process with the concatenated batch trains, and a checkpoint written from the shards (gathered to full
safetensors) resumes to exactly the uninterrupted run. accelerate's FSDP1 is refused."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from helpers import run_torchrun_script
from safetensors.torch import load_file

from tests.train_cases import embedder_run, losses, run_config, weights, write_mixed_records
from tte_fast.settings.yaml_config import ConfigError
from tte_fast.train import parse_config, train
from tte_fast.train.checkpoint import MODEL_FILE, checkpoint_root, complete_checkpoints
from tte_fast.train.sharding import refuse_accelerate_fsdp

pytestmark = pytest.mark.usefixtures("one_thread")

# The run, then (its final model and log kept aside) a resume from the step-1 checkpoint.
PROCESS = """
import json, os, shutil, sys
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from tte_fast.train import parse_config, train
from tte_fast.train.checkpoint import checkpoint_root
raw = json.loads(sys.argv[1])
out = raw["output_dir"]
train(parse_config(raw))
if dist.get_rank() == 0:
    shutil.move(os.path.join(out, "final"), os.path.join(out, "straight"))
    shutil.copy(os.path.join(out, "log.jsonl"), os.path.join(out, "straight.jsonl"))
    shutil.rmtree(os.path.join(checkpoint_root(out), "step_00000002"))
dist.barrier()
train(parse_config(raw), resume=True)
"""


def _two_processes(raw: dict) -> None:
    run_torchrun_script(PROCESS, json.dumps(raw))


def test_fsdp2_equals_one_process_and_resumes_exactly(tiny_checkpoints, tmp_path):
    # Each global batch of 2 holds a record with images and one without: the vision tower trains, so
    # the image-free process runs it on a dummy image, or the reduce-scatters would not match.
    data = write_mixed_records(tmp_path / "mixed.jsonl")
    model = tiny_checkpoints["qwen2_vl"]
    two = tmp_path / "two"
    raw = embedder_run(model, two, str(data), 1)
    raw["train"]["fsdp"] = True
    raw["checkpoint"] = {"every": 1, "keep": 2}
    _two_processes(raw)

    one = tmp_path / "one"
    train(parse_config(embedder_run(model, one, str(data), 2)))
    want = losses(one)
    with open(two / "straight.jsonl", encoding="utf-8") as f:
        straight = {r["step"]: r["loss"] for r in map(json.loads, f)}
    assert want.keys() == straight.keys() == {1, 2}
    for step in want:
        assert straight[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5)
    a, b = weights(two / "straight"), weights(one / "final")
    assert a.keys() == b.keys()
    for name in a:  # the bound of tests/train/test_distributed.py (Adam's first steps, lr 1e-4)
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=5e-5)
    base = weights(model)
    assert any(not torch.equal(a[k], base[k]) for k in a if "visual" in k)  # the vision tower trained

    # The checkpoint holds full tensors (gathered from both shards), and the resumed step 2 is the
    # uninterrupted one, bit for bit.
    (_, folder), *_ = complete_checkpoints(checkpoint_root(str(two)))
    saved = load_file(os.path.join(folder, MODEL_FILE))
    embed = next(v for k, v in saved.items() if k.endswith("embed_tokens.weight"))
    assert embed.shape == next(v for k, v in base.items() if k.endswith("embed_tokens.weight")).shape
    assert losses(two) == straight
    resumed = weights(two / "final")
    assert resumed.keys() == a.keys() and all(torch.equal(resumed[k], a[k]) for k in a)


def test_fsdp_settings_are_checked(tmp_path):
    def raw(**train_):
        return run_config("embedder", "m", tmp_path, lora={"enabled": False}, train={"fsdp": True, **train_})

    parse_config(raw())
    with pytest.raises(ConfigError, match="lora.enabled: false"):
        parse_config({**raw(), "lora": {"enabled": True}})
    with pytest.raises(ConfigError, match="head job"):
        parse_config({**raw(), "job": "head"})
    with pytest.raises(ConfigError, match="fp16"):
        parse_config(raw(mixed_precision="fp16"))


def test_accelerate_fsdp1_is_refused():
    def accelerator(version):
        state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version))
        return SimpleNamespace(distributed_type=DistributedType.FSDP, state=state)

    with pytest.raises(ValueError, match=r"FSDP1 \(FullyShardedDataParallel\) is not supported"):
        refuse_accelerate_fsdp(accelerator(1))
    with pytest.raises(ValueError, match="train.fsdp: true"):
        refuse_accelerate_fsdp(accelerator(2))
    refuse_accelerate_fsdp(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))
