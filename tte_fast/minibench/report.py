"""The minibench summary: hit@1 per meta-task and overall, chance, the perception score of the
query traces, tokens thought per query and encode throughput for each variant, as JSON and as a
printed table."""

from __future__ import annotations

import glob
import json
import os

from tte_fast.minibench.perception import score, variant_pairs

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
VARIANTS = {
    "baseline": "embedder trained and evaluated without traces",
    "TTE_t": "embedder trained and evaluated with the teacher's traces",
    "TTE_s": "SFT'd small reasoner's traces + the TTE_t embedder",
    "TTE_u": "SFT'd reasoner frozen + TTE_u head on its generation states, from the generation cache",
}


def _tokens_per_query(root: str, variant: str, tokenizer) -> float:
    """Mean tokens of the query traces the evaluation used (its trace cache), think prefix excluded."""
    counts = []
    for path in glob.glob(os.path.join(root, "eval", variant, "cache", "*", "query-traces-*.json")):
        with open(path, encoding="utf-8") as f:
            for trace in json.load(f)["traces"].values():
                body = trace.removeprefix("<think>\n")
                counts.append(len(tokenizer(body, add_special_tokens=False)["input_ids"]))
    return sum(counts) / len(counts) if counts else 0.0


def _variant_summary(root: str, variant: str, evaluation: dict, tokenizer) -> dict:
    results = evaluation["results"]
    with open(os.path.join(root, "eval", variant, "timings.json"), encoding="utf-8") as f:
        seconds = sum(json.load(f)["seconds"].values())
    tasks = results["tasks"]
    queries = sum(t["num_queries"] for t in tasks.values())
    return {
        "description": VARIANTS[variant],
        "hit@1": {
            **{m: results["meta_tasks"][m]["headline"] for m in META_TASKS if m in results["meta_tasks"]},
            "overall": results["overall"]["headline"],
        },
        "chance": sum(t["chance"] for t in tasks.values()) / len(tasks),
        "flags": {name: t["flags"] for name, t in tasks.items() if t["flags"]},
        "perception": score(variant_pairs(root, variant)) if variant != "baseline" else None,
        "tokens_per_query": _tokens_per_query(root, variant, tokenizer),
        "queries": queries,
        "encode_seconds": seconds,
        "queries_per_s": queries / seconds if seconds else None,
    }


def summarize(root: str, evaluations: dict, timings: dict, meta: dict) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(root, "base"))
    variants = {v: _variant_summary(root, v, e, tokenizer) for v, e in evaluations.items()}
    return {**meta, "variants": variants, "seconds": timings}


def format_summary(summary: dict) -> str:
    header = ["variant", *META_TASKS, "overall", "chance", "perception", "tokens/q", "queries/s"]
    rows = [header]
    for name, v in summary["variants"].items():
        hits = [f"{100 * v['hit@1'].get(m, float('nan')):.1f}" for m in (*META_TASKS, "overall")]
        rate, seen = v["queries_per_s"], (v.get("perception") or {}).get("cells")
        seen = "-" if seen is None else f"{100 * seen:.1f}"
        rows.append(
            [name, *hits, f"{100 * v['chance']:.1f}", seen, f"{v['tokens_per_query']:.1f}", f"{rate:.1f}"]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    total = summary["seconds"].get("total", 0)
    note = f"(hit@1 and perception (picture cells named right) in %, test split; total {total:.0f} s)"
    return "\n".join(lines) + "\n" + note
