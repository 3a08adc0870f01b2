"""Shared fixtures: tiny random-weight checkpoints, built once per session and loaded back
through the project's own loading code. Plain helpers (image builders, assertions) are in helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tte_fast.testing import TINY_MODEL_TYPES, build_tiny_checkpoint  # noqa: E402

VL_MODEL_TYPES = [t for t in TINY_MODEL_TYPES if t != "qwen2"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are overhead-bound; one thread avoids OpenMP spin-waits on shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """model type -> folder of a saved tiny checkpoint (built lazily, once per session)."""
    root = tmp_path_factory.mktemp("tiny_models")

    class _Lazy(dict):
        def __missing__(self, model_type):
            self[model_type] = build_tiny_checkpoint(model_type, str(root / model_type))
            return self[model_type]

    return _Lazy()


@pytest.fixture(scope="module")
def vl_model(tiny_checkpoints):
    """A tiny Qwen2-VL UnifiedTTE on CPU, loaded once per module (tests must not change it)."""
    from tte_fast.model import UnifiedTTE

    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
