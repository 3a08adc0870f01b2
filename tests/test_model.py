"""UnifiedTTE.encode's arguments: call errors, skipping bad inputs, the progress bar. (That its
embeddings equal a re-encode of ``.sequences`` is test_unified.py's concern.)"""

from __future__ import annotations

import pytest
import torch
from helpers import random_pixels

from tte_fast.model import UnifiedTTE

ATOL = 1e-4  # fp32

pytestmark = pytest.mark.usefixtures("one_thread")


def test_skip_keeps_the_rest_of_the_batch(vl_model):
    good = ["fine", {"image": random_pixels(0, 50, 70), "text": "ok"}, "also fine"]
    clean = vl_model.encode(good, max_think_tokens=3, batch_size=4)
    mixed = [good[0], {"image": b"garbage"}, good[1], "x " * 5000, good[2]]
    result = vl_model.encode(mixed, max_think_tokens=3, batch_size=4, on_error="skip")
    assert sorted(result.errors) == [1, 3]
    assert "cannot read image" in result.errors[1] and "exceeds" in result.errors[3]
    for bad in (1, 3):
        assert result.traces[bad] is None and result.sequences[bad] is None
        assert torch.count_nonzero(result.embeddings[bad]) == 0
    for got, want in zip((0, 2, 4), range(3)):
        torch.testing.assert_close(result.embeddings[got], clean.embeddings[want], atol=ATOL, rtol=0)
        assert result.traces[got] == clean.traces[want]


def test_call_errors(vl_model):
    with pytest.raises(ValueError, match="side"):
        vl_model.encode(["a"], side="both")
    with pytest.raises(ValueError, match="either think=True or traces"):
        vl_model.encode(["a"], think=True, traces=["t"])
    with pytest.raises(ValueError, match="2 traces for 1 inputs"):
        vl_model.encode(["a"], traces=["t", "u"])
    with pytest.raises(ValueError, match="batch_size"):
        vl_model.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="on_error"):
        vl_model.encode(["a"], on_error="ignore")
    with pytest.raises(TypeError, match="unknown from_pretrained options"):
        UnifiedTTE.from_pretrained("unused", not_an_option=1)


def test_progress_bar(vl_model, capsys):
    vl_model.encode(["a", "b", "c"], think=False, batch_size=1, progress=True)
    assert "encode" in capsys.readouterr().err
