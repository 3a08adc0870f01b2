"""NVTX ranges and per-stage timing for every stage of the runtime.

``stage(name)`` opens an NVTX range in the ``tte_fast`` domain (a no-op without a GPU profiler
attached) and, while a ``StageRecorder`` is active, adds the stage's wall time to it. Range names
are stable: ``nsys profile python bench/latency.py`` shows them on the timeline.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import defaultdict

import nvtx
import torch

DOMAIN = "tte_fast"

# Stable range names (documented in docs/profiling.md); nested ranges read as the pipeline.
STAGES = {
    "preprocess": "input loading, image decoding and pixel preprocessing",
    "vision_encoder": "the Qwen-VL vision tower",
    "prefill": "the prompt forward that fills the KV cache",
    "decode": "the whole think loop",
    "decode_step": "one decode step inside the think loop",
    "embed": "the embedding step: embedding token on the cache (or the TTE_u head)",
    "re_encode": "a from-scratch forward over prompt + trace (two-pass and baseline paths)",
    "pool_normalize": "last-token pooling + L2 normalisation",
    "loss": "InfoNCE loss forward (and both gradients, in infonce_loss_and_grads)",
    "gradcache_forward": "GradCache pass 1: chunked forward without a graph",
    "gradcache_loss": "GradCache pass 2: loss and representation gradients",
    "gradcache_backward": "GradCache pass 3: chunk re-forward and backward with cached gradients",
    "gather": "all-gather of representations across processes",
}

_COLORS = {
    "preprocess": "yellow",
    "vision_encoder": "orange",
    "prefill": "blue",
    "decode": "green",
    "decode_step": "green",
    "embed": "purple",
    "re_encode": "red",
    "pool_normalize": "cyan",
    "loss": "magenta",
}


class StageRecorder:
    """Sums wall time per stage for the stages entered while it is active, on its own thread (a
    recorder in one thread never sees another thread's stages).

    With ``sync_device`` set to a CUDA device, the device is synchronised at each range boundary so
    the times are the GPU work's, not the launch's (use only for measuring: it serialises the stream).
    """

    _local = threading.local()

    def __init__(self, sync_device: torch.device | str | None = None):
        device = torch.device(sync_device) if sync_device is not None else None
        self._sync = device is not None and device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def synchronize(self) -> None:
        if self._sync:
            torch.cuda.synchronize()

    @classmethod
    def active(cls) -> StageRecorder | None:
        return getattr(cls._local, "recorder", None)

    def __enter__(self) -> StageRecorder:
        if StageRecorder.active() is not None:
            raise RuntimeError("a StageRecorder is already active; nest stages, not recorders")
        StageRecorder._local.recorder = self
        return self

    def __exit__(self, *exc) -> None:
        StageRecorder._local.recorder = None

    def milliseconds(self) -> dict[str, float]:
        return {name: 1e3 * s for name, s in self.seconds.items()}


@contextlib.contextmanager
def stage(name: str):
    """An NVTX range named ``name`` (one of ``STAGES``), timed by the active StageRecorder if any."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known stages: {sorted(STAGES)}")
    recorder = StageRecorder.active()
    if recorder is not None:
        recorder.synchronize()
        start = time.perf_counter()
    with nvtx.annotate(message=name, domain=DOMAIN, color=_COLORS.get(name, "white")):
        yield
        if recorder is not None:
            recorder.synchronize()
    if recorder is not None:
        recorder.seconds[name] += time.perf_counter() - start
        recorder.counts[name] += 1


def ranged(name: str):
    """Decorator: run the function inside ``stage(name)``."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with stage(name):
                return fn(*args, **kwargs)

        return inner

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known stages: {sorted(STAGES)}")
    return wrap


def instrument_vision_encoder(hf_model: torch.nn.Module) -> list:
    """Wrap the model's vision tower (if it has one) in a ``vision_encoder`` range via forward hooks.

    The closing hook runs even when the tower raises, so no range stays open. Returns the hook
    handles (call ``.remove()`` on them to undo). Idempotent per model.
    """
    visual = getattr(hf_model, "visual", None) or getattr(getattr(hf_model, "model", None), "visual", None)
    if visual is None or getattr(visual, "_tte_fast_instrumented", False):
        return []
    open_ranges = threading.local()  # per thread: each thread's forward opens and closes its own

    def enter(module, args):
        ctx = stage("vision_encoder")
        ctx.__enter__()
        open_ranges.__dict__.setdefault("stack", []).append(ctx)

    def leave(module, args, output):
        open_ranges.stack.pop().__exit__(None, None, None)

    handles = [
        visual.register_forward_pre_hook(enter),
        visual.register_forward_hook(leave, always_call=True),
    ]
    visual._tte_fast_instrumented = True
    return handles
