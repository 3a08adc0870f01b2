"""Public entry points called from several threads at once give each caller its own results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tte_fast.model import UnifiedTTE
from tte_fast.profiling import StageRecorder, stage
from tte_fast.runtime.options import DecodeOptions

THREADS = 4
ROUNDS = 3


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40 + 8 * seed, 56, 3), dtype=np.uint8)


def _workloads() -> list[list]:
    """Different inputs per thread (text and images, different lengths and batch shapes)."""
    return [
        ["short", "a rather longer text about several things"],
        [{"image": _image(0), "text": "look"}, "plain"],
        ["one more", "and another", "and a third one here"],
        [{"image": _image(1)}],
    ]


def _run_concurrently(fn, workloads):
    """Each workload on its own thread, all released together, ROUNDS times; results per round."""
    barrier = threading.Barrier(len(workloads))

    def call(args):
        barrier.wait()
        return fn(args)

    rounds = []
    with ThreadPoolExecutor(len(workloads)) as pool:
        for _ in range(ROUNDS):
            rounds.append(list(pool.map(call, workloads)))
    return rounds


@pytest.mark.parametrize("head", ["last_token", "tte_u"])
def test_concurrent_encode_equals_sequential(tiny_checkpoints, head):
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu", head=head, head_layers=1)
    workloads = _workloads()
    encode = lambda inputs: model.encode(inputs, think=True, max_think_tokens=4, batch_size=2)
    sequential = [encode(w) for w in workloads]
    for results in _run_concurrently(encode, workloads):
        for got, want in zip(results, sequential):
            assert got.traces == want.traces
            torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-5, rtol=0)


def test_concurrent_decoder_calls_equal_sequential(tiny_checkpoints):
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    options = DecodeOptions(max_think_tokens=5, eos_token_ids=model.eos_token_ids)
    texts = [["hi"], ["hello there", "x"], ["a b c d e f", "g", "h i"], ["one two"]]
    batches = [
        dict(model.tokenizer(t, padding=True, padding_side="left", return_tensors="pt")) for t in texts
    ]
    decode = lambda batch: model.batches.decode(batch, options, embed_token_id=model.embed_token_id)
    sequential = [decode(b) for b in batches]
    for results in _run_concurrently(decode, batches):
        for got, want in zip(results, sequential):
            assert [t.tolist() for t in got.generated] == [t.tolist() for t in want.generated]
            torch.testing.assert_close(got.embed_hidden, want.embed_hidden, atol=1e-5, rtol=0)


def test_a_stage_recorder_sees_only_its_own_threads_stages():
    entered = threading.Event()
    leave = threading.Event()

    def other_thread():
        with stage("decode"):
            entered.set()
            leave.wait(5)

    with StageRecorder() as recorder:
        thread = threading.Thread(target=other_thread)
        thread.start()
        entered.wait(5)
        with stage("prefill"):
            pass
        leave.set()
        thread.join()
    assert dict(recorder.counts) == {"prefill": 1}
