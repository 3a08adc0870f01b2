"""The minibench's training schedule: which job trains when and on how many torch threads (the
thread count is part of a run's arithmetic, so it must not depend on the machine)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch

from tte_fast.minibench import pipeline


class _RecordingPool:
    """Stands in for the second process: records what is submitted and when its result is awaited."""

    def __init__(self, events: list, **_):
        self.events = events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, root, name, seed, overrides, threads):
        self.events.append(("submit", name, threads))
        events, future = self.events, Future()
        future.set_result(12.5)
        result = future.result
        future.result = lambda: events.append(("awaited", name)) or result()
        return future


@pytest.mark.parametrize("threads", [1, 3])
def test_pairs_then_the_chain_on_both_shares(monkeypatch, threads):
    events: list = []
    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", lambda **kw: _RecordingPool(events, **kw))
    monkeypatch.setattr(
        pipeline,
        "train_variant",
        lambda root, name, seed, overrides: events.append((name, torch.get_num_threads())),
    )
    before, timings = torch.get_num_threads(), {}
    pipeline.train_all("run", 0, {}, timings, threads)
    assert events == [
        ("submit", "embedder", threads),
        ("baseline", threads),
        ("awaited", "embedder"),  # the reasoner waits for the embedder's core
        ("reasoner", 2 * threads),
        ("head", 2 * threads),
    ]
    assert torch.get_num_threads() == before
    assert timings["train_embedder"] == 12.5
    assert set(timings) == {"train_embedder", "train_baseline", "train_reasoner", "train_head"}


def test_threads_below_one_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        pipeline.run(str(tmp_path), profile="fast", threads=0)
    assert not any(tmp_path.iterdir())
