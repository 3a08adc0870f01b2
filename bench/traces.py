"""Teacher traces: our engine against the vLLM backend on the same inputs (``tte-fast traces``'s
reasoners), with the prompts and outputs compared.

Workload: ``--inputs`` text queries (64), greedy, a think budget of ``--think-budget`` tokens (64)
and the checkpoint's answer budget, ``--slots`` engine slots (16).

- ``engine``: ``EngineReasoner.generate`` (our continuous-batching engine, ``think``'s path) in this
  process.
- ``vllm``: ``VllmReasoner.generate``: the same prompts' token ids through ``LLM.generate`` in two
  requests per trace (think budget, then answer budget for traces that closed their think section),
  vLLM in its own environment (``--vllm-python``, default ``.venv-vllm/bin/python``) as a worker
  that keeps the model loaded; its prefix cache is reset before every run, so no timed run reuses
  the one before's KV blocks.

The engine side is timed first, before the vLLM worker starts (an idle vLLM engine process still
takes CPU), then the vLLM side: medians of ``--repeats`` runs after a warm-up, load time excluded.
Reported: traces/s and generated tokens/s of each, the ratio, whether every prompt sent to vLLM is
the engine's (token ids), and how many traces, stop reasons and token counts are identical.

The model: ``--model`` (a text checkpoint; ``bench/peer_vllm.py`` converts SmolLM2-135M-Instruct
into one), else a tiny random Qwen2 with 64-wide heads (vLLM's CPU attention takes head sizes from 32).
``--dry-run`` runs the engine side only (no vLLM needed). Set-up: bench/README.md, "vLLM peer".

    python bench/traces.py --repeats 3 --json traces.json
    python bench/traces.py --model /tmp/tte_peer_smollm2_135m --inputs 64 --think-budget 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VLLM_PYTHON = os.path.join(os.path.dirname(HERE), ".venv-vllm", "bin", "python")
TINY_SHAPE = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
SUBJECTS = ["photosynthesis", "black holes", "vaccines", "compound interest", "plate tectonics", "honey bees"]
FORMS = ["What is {}?", "Explain {} to a child.", "Three facts about {}.", "Summarise {} in a sentence."]


def queries(n: int):
    """``n`` distinct text inputs of the trace job."""
    from tte_fast.traces.sources import TraceInput

    texts = [f.format(s) for f in FORMS for s in SUBJECTS]
    texts = [texts[i % len(texts)] + (f" ({i // len(texts)})" if i >= len(texts) else "") for i in range(n)]
    return [TraceInput(f"q{i}", "query", {"text": t}, f"query {i}") for i, t in enumerate(texts)]


def summarize(generations, seconds: float) -> dict:
    tokens = sum(g.generated_tokens or 0 for g in generations)
    return {
        "seconds": round(seconds, 4),
        "traces_per_s": round(len(generations) / seconds, 2),
        "generated_tokens": tokens,
        "generated_tokens_per_s": round(tokens / seconds, 1),
    }


def compare(engine, vllm) -> dict:
    """How many traces (text), stop reasons and token counts are identical."""
    pairs = list(zip(engine, vllm))
    return {
        "traces_identical": sum(a.trace == b.trace for a, b in pairs),
        "stop_reasons_identical": sum(a.stop_reason == b.stop_reason for a, b in pairs),
        "token_counts_identical": sum(
            (a.prompt_tokens, a.generated_tokens) == (b.prompt_tokens, b.generated_tokens) for a, b in pairs
        ),
    }


def prompts_identical(model, options, inputs) -> int:
    """How many prompts sent to vLLM are the token ids our engine prefills for them."""
    from tte_fast.inputs import check_input
    from tte_fast.prompting.batching import unpadded
    from tte_fast.traces.external import build_prompt

    same = 0
    for i, x in enumerate(inputs):
        batch = model.batch_inputs([check_input(i, x.input)], [i], "query", True, None, options)
        same += unpadded(batch)[0].tolist() == build_prompt(model, i, x.input, "query", options).token_ids
    return same


def run(args, path: str) -> dict:
    from tte_fast.integrations.vllm_reasoner import VllmReasoner
    from tte_fast.model import UnifiedTTE
    from tte_fast.settings.params import EncodeParams
    from tte_fast.traces.engine_reasoner import EngineReasoner

    inputs = queries(args.inputs)
    params = EncodeParams(max_think_tokens=args.think_budget, batch_size=args.slots)
    model = UnifiedTTE.from_pretrained(path, device=args.device, dtype=args.dtype)
    engine = EngineReasoner(model, params)
    out: dict = {}
    timing = harness.median_times(
        {"engine": lambda: out.update(engine=engine.generate(inputs))}, args.device, args.repeats
    )
    row = {"inputs": len(inputs), "engine": summarize(out["engine"], timing["engine"].wall_s)}
    row["prompts_identical"] = prompts_identical(model, engine.options, inputs)
    if args.dry_run:
        return row
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gb))
    engine_args = {"python": args.vllm_python, "max_model_len": args.max_model_len, "seed": 0}
    vllm = VllmReasoner(path, params, dtype=args.dtype, engine_args=engine_args, prompt_model=model)
    try:

        def vllm_run():
            vllm.llm.reset_prefix_cache()
            out["vllm"] = vllm.generate(inputs)

        timing = harness.median_times({"vllm": vllm_run}, args.device, args.repeats)
    finally:
        vllm.llm.close()
    row["vllm"] = summarize(out["vllm"], timing["vllm"].wall_s)
    row["engine_over_vllm"] = round(row["vllm"]["seconds"] / row["engine"]["seconds"], 2)
    row.update(compare(out["engine"], out["vllm"]))
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser, repeats=3, devices=["cpu"])
    parser.add_argument("--model", default=None, help="a text checkpoint (default: a tiny random Qwen2)")
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--think-budget", type=int, default=64)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--vllm-python", default=DEFAULT_VLLM_PYTHON)
    parser.add_argument("--dry-run", action="store_true", help="our engine only (no vLLM)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        path = args.model
        if path is None:
            from tte_fast.testing import build_tiny_checkpoint

            folder = stack.enter_context(tempfile.TemporaryDirectory())
            path = build_tiny_checkpoint("qwen2", folder, **TINY_SHAPE)
        row = run(args, path)
    sides = ["engine"] + ([] if args.dry_run else ["vllm"])
    harness.print_table(
        ["side", "traces/s", "generated tok/s", "generated tokens", "seconds"],
        [
            [
                s,
                row[s]["traces_per_s"],
                row[s]["generated_tokens_per_s"],
                row[s]["generated_tokens"],
                row[s]["seconds"],
            ]
            for s in sides
        ],
        title=f"traces of {row['inputs']} inputs, budget {args.think_budget} ({args.model or 'tiny qwen2'})",
    )
    n = row["inputs"]
    print(f"prompts identical: {row['prompts_identical']}/{n}")
    if not args.dry_run:
        ratio = row["engine_over_vllm"]
        print(f"traces identical: {row['traces_identical']}/{n}; engine speed / vLLM speed: {ratio}x")
    harness.save_report(args, {"results": row})
    return row


if __name__ == "__main__":
    main()
