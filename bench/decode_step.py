"""One engine decode step against the time of its matmuls alone, and where the rest goes.

A step of the continuous-batching engine: every slot busy at ``--context`` cached tokens, one token
fed per slot onto the slot cache (``Runner.decode_step``, as ``Engine`` calls it), then the greedy
pick (``greedy_tokens``). Timed for both decoders (``fused``: tte_fast.runtime.fused_decoder;
``transformers``: transformers' modules) at each ``--batches`` size, against ``matmuls``: the same
step's linear layers (fused shapes) and LM head alone, on inputs of the same sizes, which is what
a step cannot go under. A profile of the fused step sorts its time into matmuls, attention (on CPU with
the step's rotary and cache write), other ops (norms, activations, the greedy pick) and the host.

The model: ``--model`` (a checkpoint folder, e.g. the vLLM peer's SmolLM2-135M-Instruct) or, by
default, random weights of SmolLM2-135M-Instruct's shape (a Llama: hidden 576, 30 layers, 9 heads,
3 KV heads, vocabulary 49,152, tied embeddings), built in memory (no download). Goal on CPU: the
fused step within 1.5x of its matmuls at batch 16 and 64.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from tte_fast.kernels.decode_attention_cpp import StepAttention
from tte_fast.runtime import cpu_linear, fused_decoder, slot_attention
from tte_fast.runtime.cpu_linear import PackedLinear
from tte_fast.runtime.runner import Runner
from tte_fast.runtime.sampling import greedy_tokens
from tte_fast.runtime.slot_cache import SlotCache

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
)
# Profiler op names by where a step's time goes.
CATEGORIES = {
    "matmuls": ("aten::mm", "aten::addmm", "aten::linear", "mkldnn::_linear_pointwise", "tte::linear"),
    "attention": (
        "aten::bmm",
        "aten::baddbmm",
        "aten::_softmax",
        "aten::_scaled_dot_product",
        "tte::attention",
    ),
}
# The C++ extension's calls are no torch ops: during the profile they run inside ranges of these names.
PROFILED_CPP = {
    (PackedLinear, "__call__"): "tte::linear",  # the AMX kernel's calls (oneDNN's are torch ops)
    (slot_attention, "decode_attention_cpp"): "tte::attention",
    (StepAttention, "__call__"): "tte::attention",  # with the step's rotary and cache write
    **{(fused_decoder, name): "tte::decoder_ops" for name in ("add_rms_norm", "rotary")},
    (cpu_linear, "silu_mul"): "tte::decoder_ops",  # SwiGLU where the AMX kernel does not compute it
}


def load_model(args, dtype):
    if args.model:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(args.device, dtype).eval()


def busy_cache(model, batch: int, context: int) -> SlotCache:
    """Every slot busy at ``context`` cached tokens (random keys and values)."""
    cache = SlotCache.for_model(model, batch, -(-(context + 1) // 64) * 64)
    for store in (*cache.keys, *cache.values):
        store.normal_()
    cache.positions.fill_(context)
    cache.host_positions = [context] * batch
    return cache


def step_fn(runner: Runner, cache: SlotCache, batch: int, context: int):
    dtype = cache.keys[0].dtype
    vocab = runner.lm_head.weight.shape[0]
    device = cache.positions.device
    tokens = torch.randint(0, vocab, (batch, 1), device=device)
    positions = torch.full((batch, 1), context, device=device)

    def step():
        cache.select(None, windowed=not runner.compiled)
        try:
            _, logits = runner.step(tokens, positions, cache.attention_bias(dtype), cache)
        finally:
            cache.select(None)
        return greedy_tokens(logits)

    return step


def matmuls_fn(model, batch: int):
    """The step's linear layers (fused shapes) and LM head on random inputs of the step's sizes, as the
    fused step runs them (``PackedLinear``: on CPU the AMX kernel where the CPU has AMX tiles and the
    dtype is bfloat16, else oneDNN's packed inner product)."""
    weights = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        weights += [
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            attn.o_proj.weight,
            torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            mlp.down_proj.weight,
        ]
    weights.append(model.lm_head.weight)
    inputs = [torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]
    linears = [PackedLinear(w) for w in weights]  # as the fused step runs them

    def run():
        for x, linear in zip(inputs, linears):
            linear(x)

    return run


def breakdown(step, repeats: int) -> dict[str, float]:
    """Milliseconds per step by kind of op (the profiler's self CPU time: with several threads it
    can exceed the wall time); the C++ extension's attention and elementwise ops counted too."""
    from torch.profiler import profile, record_function

    def ranged(function, name):
        def call(*args, **kwargs):
            with record_function(name):
                return function(*args, **kwargs)

        return call

    step()
    originals = {key: getattr(*key) for key in PROFILED_CPP}
    try:
        for (module, attr), name in PROFILED_CPP.items():
            setattr(module, attr, ranged(originals[(module, attr)], name))
        with profile() as prof:
            for _ in range(repeats):
                step()
    finally:
        for (module, attr), function in originals.items():
            setattr(module, attr, function)
    spent = dict.fromkeys([*CATEGORIES, "other ops"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, names in CATEGORIES.items() if event.key.startswith(names)), "other ops")
        spent[kind] += event.self_cpu_time_total / 1e3 / repeats
    return spent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint folder (default: random SmolLM2-135M shape)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--context", type=int, default=128, help="cached tokens per slot")
    harness.add_common_args(parser, repeats=10, dtype="bfloat16")
    args = parser.parse_args(argv)
    dtype = harness.DTYPES[args.dtype]
    model = load_model(args, dtype)
    rows, report = [], {"points": []}
    with torch.inference_mode():
        for batch in args.batches:
            fns = {
                "matmuls": matmuls_fn(model, batch),
                "fused": step_fn(
                    Runner(model, decoder="fused"),
                    busy_cache(model, batch, args.context),
                    batch,
                    args.context,
                ),
                "transformers": step_fn(
                    Runner(model, decoder="transformers"),
                    busy_cache(model, batch, args.context),
                    batch,
                    args.context,
                ),
            }
            times = harness.median_times(fns, args.device, args.repeats, warmup=2)
            # The profile's split is of CPU ops (on CUDA their launch costs, not the kernels).
            spent = breakdown(fns["fused"], max(3, args.repeats // 2)) if args.device == "cpu" else {}
            base = times["matmuls"].wall_s
            for name, t in times.items():
                rows.append(
                    [
                        batch,
                        name,
                        f"{t.wall_s * 1e3:.1f}",
                        f"{t.wall_s / base:.2f}x",
                        f"{batch / t.wall_s:.0f}",
                    ]
                )
            report["points"].append(
                {
                    "batch": batch,
                    "ms": {k: t.wall_s * 1e3 for k, t in times.items()},
                    "fused_breakdown_ms": spent,
                }
            )
            print(
                f"batch {batch}, fused step by kind of op (ms, profiled): "
                + ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
                + f", host and rest {times['fused'].wall_s * 1e3 - sum(spent.values()):.1f}",
                flush=True,
            )
    name = args.model or "random SmolLM2-135M shape"
    harness.print_table(
        ["batch", "path", "ms/step", "x matmuls", "tokens/s"],
        rows,
        title=f"decode step: {name}, {args.dtype}, {args.context} cached tokens per slot, "
        f"{torch.get_num_threads()} threads on {harness.device_name(args.device)}",
    )
    harness.save_report(args, report)


if __name__ == "__main__":
    main()
