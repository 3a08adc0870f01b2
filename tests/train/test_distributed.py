"""Two gloo processes train exactly what one process with the concatenated batch trains, and a process
whose batch has no image does not hang the other (vision tower trained, so DDP needs its gradients)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_torchrun_script

from tests.train_cases import embedder_run, losses, weights, write_mixed_records
from tte_fast.train import parse_config, train

pytestmark = pytest.mark.usefixtures("one_thread")

PROCESS = """
import json, sys
import torch
torch.set_num_threads(1)
from tte_fast.train import parse_config, train
train(parse_config(json.loads(sys.argv[1])))
"""


def test_two_processes_equal_one_and_image_free_process_does_not_hang(tiny_checkpoints, tmp_path):
    # Every global batch of 2 holds one record with images and one without: one process of the two
    # sees no image at all in a step, the other does.
    data = write_mixed_records(tmp_path / "mixed.jsonl")
    model = tiny_checkpoints["qwen2_vl"]
    two = tmp_path / "two"
    run_torchrun_script(PROCESS, json.dumps(embedder_run(model, two, str(data), 1)), timeout=240)

    one = tmp_path / "one"
    train(parse_config(embedder_run(model, one, str(data), 2)))
    want, got = losses(one), losses(two)
    assert want.keys() == got.keys() == {1, 2}
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5)
    a, b = weights(two / "final"), weights(one / "final")
    assert a.keys() == b.keys()
    for name in a:
        # Adam's first steps move each weight by about lr * sign(grad): weights whose gradient is
        # ~0 may move either way under rounding, so the bound is half of lr (a real gradient
        # difference flips signs and moves weights by up to 2 lr).
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=5e-5)
    base = weights(model)
    assert any(not torch.equal(a[k], base[k]) for k in a if "visual" in k)  # the vision tower trained
