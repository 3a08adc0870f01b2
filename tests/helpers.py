"""Plain helpers shared by the test modules: small image builders, assertions, process set-up.

pytest puts tests/ on sys.path, so test modules import these as ``from helpers import ...``;
fixtures live in conftest.py, the kernel backends every kernel test runs on in kernel_cases.py.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import numpy as np
import PIL.Image
import torch


def random_pixels(seed, height: int, width: int, channels: int | None = 3) -> np.ndarray:
    """Random uint8 pixels, HxWxC (HxW when ``channels`` is None); ``seed`` is an int or a
    numpy Generator (then successive calls draw different images)."""
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def random_image(seed, height: int, width: int, mode: str = "RGB") -> PIL.Image.Image:
    """A random RGB image converted to ``mode``."""
    return PIL.Image.fromarray(random_pixels(seed, height, width)).convert(mode)


def encode_image(image: PIL.Image.Image, fmt: str, **save_options) -> bytes:
    """The image encoded as ``fmt`` (PNG, JPEG, ...) bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_options)
    return buffer.getvalue()


def assert_same_features(ours, reference) -> None:
    """Two image processor outputs are identical: the same grids and the same float32 bytes."""
    assert ours["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(ours["image_grid_thw"], reference["image_grid_thw"])
    np.testing.assert_allclose(ours["pixel_values"], reference["pixel_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours["pixel_values"], reference["pixel_values"])  # the same bytes


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """max |actual - expected| within ``tol`` of expected's largest magnitude (floored at 1e-3, and
    at 1 for a scalar such as a loss), compared in float64."""
    scale = expected.abs().max().clamp_min(1.0 if expected.dim() == 0 else 1e-3)
    err = ((actual.detach().cpu().double() - expected.double()).abs().max() / scale).item()
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


class StopFirstRow(torch.nn.Module):
    """LM head wrapper that makes batch row 0 emit ``stop`` at decode call ``at``: a per-row early stop
    (tiny random models never emit EOS). The embedding path reads hidden states, never these logits."""

    def __init__(self, head: torch.nn.Module, stop: int, at: int):
        super().__init__()
        self.head, self.stop, self.at, self.calls = head, stop, at, 0

    def forward(self, hidden):
        logits = self.head(hidden)
        if self.calls == self.at:
            logits[0, self.stop] = logits.max() + 100.0
        self.calls += 1
        return logits


def free_port() -> int:
    """A free TCP port on loopback (for a process group's rendezvous or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun gives process ``rank`` of ``world`` on this machine."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def set_torchrun_env(rank: int, world: int, port: int) -> None:
    os.environ.update(torchrun_env(rank, world, port))


def run_torchrun_script(script: str, argument: str, world: int = 2, timeout: float = 300) -> list[str]:
    """``python -c script argument`` as ``world`` processes of one torchrun group (one thread each,
    the project importable); every one must exit 0. Returns their outputs."""
    port, procs = free_port(), []
    for rank in range(world):
        env = {
            **os.environ,
            "PYTHONPATH": os.getcwd(),
            "OMP_NUM_THREADS": "1",
            **torchrun_env(rank, world, port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, argument],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * world, "".join(o[-3000:] for o in outputs)
    return outputs


def engine_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (36 + 10 * seed, 60, 3), dtype=np.uint8)


# Text and image inputs of different lengths (three images of different sizes, one with its own
# instruction): what the engine tests run in every order and slot count.
ENGINE_INPUTS = [
    "short",
    {"image": engine_image(0), "text": "what is shown"},
    "a rather longer text about several different things at once",
    {"image": engine_image(1)},
    "x",
    {"image": engine_image(2), "text": "and this one", "instruction": "Find the caption."},
]


def engine_inputs(model) -> list:
    """ENGINE_INPUTS, the text ones alone for a text-only model."""
    return ENGINE_INPUTS if model.vision else [x for x in ENGINE_INPUTS if isinstance(x, str)]


def run_engine(model, inputs, slots: int, embed: bool, **options):
    """Each input's EngineResult from ``slots`` slots of the model's engine."""
    from tte_fast.inputs import check_input

    engine = model.engine(slots)
    opts = model.decode_options(**options)
    futures = [engine.submit(check_input(i, x), opts, embed=embed, index=i) for i, x in enumerate(inputs)]
    engine.run_until_done()
    return [f.result() for f in futures]


def generated(result) -> list[int]:
    """The tokens a request generated and kept (its sequence less prompt and embedding token)."""
    end = len(result.sequence) - (result.embedding is not None)
    return result.sequence[result.prompt_tokens : end].tolist()


def hf_greedy(model, i: int, item, max_new_tokens: int, **generate) -> tuple[list[int], list[int]]:
    """HF ``generate``'s greedy tokens for input ``i`` alone (the reference of the decode tests), and
    its prompt's ids; ``generate`` adds HF options (``stop_strings``, ``repetition_penalty``, ...)."""
    from tte_fast.inputs import check_input

    options = model.decode_options(max_think_tokens=max_new_tokens)
    batch = model.batch_inputs([check_input(i, item)], [i], "query", True, None, options)
    with torch.inference_mode():
        out = model.hf_model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(model.eos_token_ids),
            pad_token_id=model.pad_token_id,
            **generate,
        )
    prompt = batch["input_ids"][0]
    return out[0, len(prompt) :].tolist(), prompt.tolist()


def check_schedulers_agree(model, inputs, results, slots: int, atol: float = 1e-5, **options) -> None:
    """Static batches and the continuous engine (``slots`` slots) give the engine ``results``'
    sequences and traces, and equal embeddings (``atol``: float32 tiny models)."""
    static = model.encode(inputs, think=True, batch_size=4, scheduler="static", **options)
    continuous = model.encode(inputs, think=True, batch_size=slots, **options)
    for i, r in enumerate(results):
        assert static.sequences[i].tolist() == r.sequence.tolist(), f"input {i}"
        assert continuous.sequences[i].tolist() == r.sequence.tolist(), f"input {i}"
    assert static.traces == continuous.traces == [r.trace for r in results]
    torch.testing.assert_close(continuous.embeddings, static.embeddings, atol=atol, rtol=0)
