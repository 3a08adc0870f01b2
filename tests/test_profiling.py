"""NVTX stage names are checked and timed."""

import time

import pytest
import torch

from tte_fast.profiling import STAGES, StageRecorder, instrument_vision_encoder, stage


def test_stage_records_time_and_counts():
    with StageRecorder() as rec:
        for _ in range(3):
            with stage("decode_step"):
                time.sleep(0.002)
        with stage("embed"):
            pass
    assert rec.counts == {"decode_step": 3, "embed": 1}
    assert rec.milliseconds()["decode_step"] >= 6.0


def test_stage_outside_recorder_is_a_plain_range():
    with stage("prefill"):
        value = 1
    assert value == 1


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="prefil"), stage("prefil"):
        pass


def test_recorders_do_not_nest():
    with StageRecorder(), pytest.raises(RuntimeError, match="already active"), StageRecorder():
        pass


def test_vision_encoder_hooks_time_the_tower():
    class Tower(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.001)
            return x

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Tower()

    model = Model()
    handles = instrument_vision_encoder(model)
    assert len(handles) == 2 and instrument_vision_encoder(model) == []
    with StageRecorder() as rec:
        model.visual(torch.zeros(1))
    assert rec.counts["vision_encoder"] == 1
    assert set(rec.counts) <= set(STAGES)


def test_kernels_are_ranges():
    from tte_fast.kernels import infonce_loss, pool_normalize

    with StageRecorder() as rec:
        pool_normalize(torch.randn(2, 3, 4), torch.ones(2, 3))
        infonce_loss(torch.randn(2, 4), torch.randn(2, 4))
    assert rec.counts == {"pool_normalize": 1, "loss": 1}


def test_gradcache_phases_are_ranges():
    from tte_fast.gradcache import gradcache_step

    encoder = torch.nn.Sequential(torch.nn.Linear(8, 4))
    normalize = lambda x: torch.nn.functional.normalize(encoder(x), dim=-1)
    with StageRecorder() as rec:
        gradcache_step(normalize, torch.randn(6, 8), torch.randn(6, 8), chunk_size=4)
    assert {"gradcache_forward", "gradcache_loss", "gradcache_backward"} <= set(rec.counts)


def test_unified_encode_shows_every_stage(tiny_checkpoints):
    import numpy as np

    from tte_fast import UnifiedTTE

    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"])
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    with StageRecorder() as rec:
        model.encode([{"image": image, "text": "a query"}, "another"], max_think_tokens=3)
    expected = {"preprocess", "vision_encoder", "prefill", "decode", "decode_step", "embed", "pool_normalize"}
    assert expected <= set(rec.counts)
    assert rec.counts["decode_step"] >= 3
