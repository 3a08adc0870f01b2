"""End-to-end think-then-embed latency, per stage, for three paths over the same model and inputs.

1. ``unified``: tte_fast thinks, then embeds from the generation cache (``UnifiedTTE.encode``).
2. ``two_pass``: tte_fast thinks, then re-encodes query + trace with the same model.
3. ``hf``: what users run today: the HF processor, ``model.generate``, then a re-encode with
   ``output_hidden_states=True`` and last-token pooling (the VLM2Vec recipe).

With no arguments it runs on CPU on the built-in tiny (untrained) Qwen2-VL. Every stage is an NVTX
range, so ``nsys profile python bench/latency.py ...`` shows the pipeline on a timeline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from tte_fast import UnifiedTTE
from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.checkpoint.model_types import auto_model_class, is_qwen_vl
from tte_fast.inputs import check_input, load_input
from tte_fast.profiling import StageRecorder, instrument_vision_encoder, stage
from tte_fast.prompting.prompts import render_prompt

# harness.py lies beside this file; found also when this file is loaded by path (tests). Appended,
# so that bench/ shadows no other module.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROWS = ("preprocess", "prefill", "vision_encoder", "decode", "embed", "re_encode", "pool_normalize")
PATHS = ("unified", "two_pass", "hf")


def make_inputs(batch_size: int, image_size: int, vision: bool, seed: int = 0) -> list:
    """Mixed queries: with images, every other one is image + text, the rest text only."""
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(batch_size):
        text = (
            f"Query {i}: find the picture that matches a {['red', 'green', 'blue'][i % 3]} object on a table."
        )
        if vision and i % 2 == 0:
            size = (image_size, image_size + 32 * (i % 3), 3)  # a few sizes in one batch
            inputs.append({"image": rng.integers(0, 256, size, dtype=np.uint8), "text": text})
        else:
            inputs.append(text)
    return inputs


class HFBaseline:
    """HF processor + ``generate`` + re-encode with ``output_hidden_states=True`` + last-token pooling."""

    def __init__(self, tte: UnifiedTTE, path: str, dtype: torch.dtype, device: torch.device):
        from transformers import Qwen2VLImageProcessorPil

        self.tte = tte  # for its prompts only, so both sides see the same text
        vision = is_qwen_vl(tte.model_type)
        self.model = (
            auto_model_class(tte.model_type)
            .from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
            .to(device)
            .eval()
        )
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path) if vision else None
        self.processor = load_processor(path, tte.model_type, image_processor)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.vision = vision
        self.device = device
        instrument_vision_encoder(self.model)

    def _tokenize(self, texts: list[str], images: list) -> dict:
        if self.vision:
            batch = self.processor(
                text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
            )
        else:
            batch = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.inference_mode()
    def encode(self, inputs: list, think_tokens: int) -> torch.Tensor:
        tte = self.tte
        with stage("preprocess"):
            items = [load_input(i, check_input(i, x)) for i, x in enumerate(inputs)]
            images = [item.image for item in items if item.image is not None]
            prompts = [
                render_prompt(self.processor, item, "query", True, tte.config.prompts, self.vision)
                for item in items
            ]
            batch = self._tokenize(prompts, images)
        with stage("decode"):  # HF generate: prefill and decode in one call
            out = self.model.generate(
                **batch, max_new_tokens=think_tokens, do_sample=False, pad_token_id=tte.pad_token_id
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        traces = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        with stage("preprocess"):
            full = [p + t + tte.embed_token for p, t in zip(prompts, traces)]
            batch = self._tokenize(full, images)
        with stage("re_encode"):
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]
        with stage("pool_normalize"):
            return F.normalize(hidden[:, -1].float(), dim=-1)  # left padding: the last column is real


def run_unified(tte: UnifiedTTE, inputs: list, think_tokens: int) -> torch.Tensor:
    return tte.encode(inputs, think=True, max_think_tokens=think_tokens, batch_size=len(inputs)).embeddings


def run_two_pass(tte: UnifiedTTE, inputs: list, think_tokens: int, recorder: StageRecorder) -> torch.Tensor:
    traces = tte.think(inputs, max_think_tokens=think_tokens, batch_size=len(inputs))
    before = dict(recorder.seconds)
    with stage("re_encode"):
        emb = tte.encode(inputs, traces=traces, batch_size=len(inputs)).embeddings
    # Book the second pass's nested ranges as one re-encode, its preprocessing apart.
    for name in ("prefill", "vision_encoder", "embed", "pool_normalize"):
        recorder.seconds[name] = before.get(name, 0.0)
    recorder.seconds["re_encode"] -= recorder.seconds["preprocess"] - before.get("preprocess", 0.0)
    return emb


def time_path(fn, device: torch.device, repeats: int, warmup: int) -> dict:
    """End-to-end and per-stage medians of one path, its runs in a row after ``warmup`` untimed ones."""
    totals, stages = [], {row: [] for row in ROWS}

    def run():
        with StageRecorder(sync_device=device) as recorder:
            fn(recorder)
            recorder.synchronize()
        return recorder.seconds

    for i in range(warmup + repeats):
        timing, seconds = harness.timed(run, device)
        if i >= warmup:
            totals.append(timing.wall_s)
            for row in ROWS:
                stages[row].append(seconds.get(row, 0.0))
    return {
        "total_ms": 1e3 * statistics.median(totals),
        "stages_ms": {row: 1e3 * statistics.median(v) for row, v in stages.items()},
    }


def print_table(results: dict) -> None:
    base = results["hf"]["total_ms"]
    rows = []
    for row in ROWS:
        cells = [results[p]["stages_ms"][row] for p in PATHS]
        if any(cells):
            label = "  vision (in prefill)" if row == "vision_encoder" else row
            rows.append([label] + [f"{c:.1f}" if c else "-" for c in cells])
    rows.append(["end to end"] + [f"{results[p]['total_ms']:.1f}" for p in PATHS])
    rows.append(["speed-up vs hf"] + [f"{base / results[p]['total_ms']:.2f}x" for p in PATHS])
    harness.print_table(("stage (median ms)", *PATHS), rows)
    print("hf: decode is generate() (prefill + decode)")
    print("unified: the embedding-token step runs as the last decode step")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder (default: built-in tiny Qwen2-VL)")
    harness.add_common_args(parser, repeats=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--think-tokens", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224, help="side of the random query images")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), harness.DTYPES[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            from tte_fast.testing import build_tiny_checkpoint

            print("model: built-in tiny Qwen2-VL (random weights)")
            path = build_tiny_checkpoint("qwen2_vl", tmp)
        tte = UnifiedTTE.from_pretrained(path, dtype=dtype, device=device)
        hf = HFBaseline(tte, path, dtype, device)
        inputs = make_inputs(args.batch_size, args.image_size, tte.vision)
        n = args.think_tokens
        runs = {
            "unified": lambda rec: run_unified(tte, inputs, n),
            "two_pass": lambda rec: run_two_pass(tte, inputs, n, rec),
            "hf": lambda rec: hf.encode(inputs, n),
        }
        results = {name: time_path(fn, device, args.repeats, args.warmup) for name, fn in runs.items()}

    print(
        f"\nbatch {args.batch_size}, {n} think tokens, images {args.image_size}px, {args.dtype} on {device}"
    )
    print_table(results)
    harness.save_report(args, {"paths": results})


if __name__ == "__main__":
    main(sys.argv[1:])
