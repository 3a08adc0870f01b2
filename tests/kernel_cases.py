"""The (backend, device) pairs every kernel test runs on."""

import os

import pytest
import torch


def backend_cases() -> list[tuple[str, str]]:
    """(backend, device) pairs: the chunked torch path always, Triton on CPU tensors under the
    interpreter, and on a GPU the compiled kernels (run with TRITON_INTERPRET=0 there). Not the
    ``reference`` backend: it is what the tests compare with (in float64), so testing it against
    itself would only inflate the count."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    cases = [("torch", "cpu")] + ([("triton", "cpu")] if interpreting else [])
    if torch.cuda.is_available():
        cases += [("torch", "cuda")] + ([] if interpreting else [("triton", "cuda")])
    return cases


CASES = backend_cases()
CASE_IDS = [f"{backend}-{device}" for backend, device in CASES]
on_every_backend = pytest.mark.parametrize("backend,device", CASES, ids=CASE_IDS)


def poison_empty(monkeypatch) -> None:
    """Make every ``torch.empty`` allocation start as NaN (floats) or a huge negative (ints), so a
    kernel that leaves part of an output unwritten shows up in the result; ``monkeypatch.undo()``
    restores it."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out.fill_(-(2**30))

    monkeypatch.setattr(torch, "empty", poisoned_empty)
