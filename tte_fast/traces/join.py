"""Traces joined back into what training and evaluation read, with no hand conversion.

- :func:`write_reasoner_records`: one ``{"input", "trace", "answer"}`` line per training record
  (the ``tte-fast train`` reasoner job's JSONL): the teacher's reasoning without the think tags and
  its answer. A record whose trace failed, never closed its think section, or has no answer is left
  out and counted.
- :func:`write_embedder_records`: one ``{"query", "pos", "negs", "query_trace", "pos_trace"}`` line per
  pair record (the embedder and head jobs' JSONL; MMEB-layout records come out in our layout): the
  traces of the sides the job generated, as ``UnifiedTTE.think`` returns them. A record missing a
  trace it should have is left out and counted.
- :func:`write_eval_cache`: the traces of evaluation tasks into the eval's trace cache
  (``tte_fast.eval.cache.TraceCache``) under the fingerprint ``tte-fast eval`` computes for this
  reasoner and decoding, so the eval embeds them instead of thinking.

Records are read again exactly as the job read them (``tte_fast.traces.sources``) and matched by id.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from tte_fast.corpus.store import OutputFolder, read_table
from tte_fast.traces.sources import model_input, read_training_records, record_sides, training_key


class JoinError(ValueError):
    """Traces that cannot be joined as asked (the message says why)."""


def read_traces(output: str) -> tuple[dict, dict]:
    """(the folder's manifest, id -> row) of a trace job's output folder."""
    manifest = OutputFolder(output).read_manifest()
    if manifest is None:
        raise JoinError(f"{output}: no trace job output here (no manifest)")
    columns = ["id", "trace", "reasoning", "answer", "error"]
    rows = read_table(output).select(columns).to_pylist()
    return manifest, {r["id"]: r for r in rows}


def _write_jsonl(path: str, lines) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    n = 0
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _missing(row) -> str | None:
    """Why a row gives no trace (None: it does)."""
    if row is None:
        return "not generated"
    if row["error"] is not None:
        return "failed"
    return None


def write_reasoner_records(config, traces: dict, path: str) -> dict:
    skipped: Counter = Counter()

    def lines():
        for _, records in read_training_records(config):
            for record in records:
                raw = record_sides(record)["query"]
                row = traces.get(training_key("query", raw))
                why = _missing(row)
                if why is None and row["answer"] is None:
                    why = "think section not closed"
                elif why is None and not (row["answer"] and row["reasoning"]):
                    why = "empty reasoning or answer"
                elif why is None and ("<think>" in row["reasoning"] or "</think>" in row["reasoning"]):
                    why = "think tags inside the reasoning"
                if why is not None:
                    skipped[why] += 1
                    continue
                yield {"input": model_input(raw), "trace": row["reasoning"], "answer": row["answer"]}

    written = _write_jsonl(path, lines())
    return {"path": path, "written": written, "skipped": dict(skipped)}


def write_embedder_records(config, traces: dict, path: str) -> dict:
    if config.records != "pairs":
        raise JoinError("embedder records join pairs: the job read reasoner (sft) records")
    fields = {"query": "query_trace", "target": "pos_trace"}
    skipped: Counter = Counter()

    def lines():
        for _, records in read_training_records(config):
            for record in records:
                line = {
                    "query": model_input(record.query),
                    "pos": model_input(record.pos),
                    "negs": [model_input(n) for n in record.negs],
                }
                sides = record_sides(record)
                for side in config.sides:
                    row = traces.get(training_key(side, sides[side]))
                    why = _missing(row)
                    if why is not None:
                        skipped[f"{side} trace {why}"] += 1
                        break
                    line[fields[side]] = row["trace"]
                else:
                    yield line

    written = _write_jsonl(path, lines())
    return {"path": path, "written": written, "skipped": dict(skipped)}


def write_eval_cache(config, manifest: dict, traces: dict, cache_root: str) -> dict:
    from tte_fast.eval.cache import TraceCache

    if not config.tasks:
        raise JoinError("the eval trace cache joins evaluation tasks: the job read training records")
    fingerprints = manifest.get("eval_trace_fingerprints") or {}
    missing = [s for s in config.sides if s not in fingerprints]
    if missing:
        raise JoinError(
            f"no eval trace fingerprint for side(s) {missing}: tte-fast eval decodes with the reasoner's "
            "budgets and its own sampling, and these traces were decoded otherwise "
            f"(decode: {manifest['settings']['decode']})"
        )
    per_file: dict[tuple[str, str], dict] = {}
    for key, row in traces.items():
        task, _, rest = key.rpartition("/")
        side, _, fingerprint = rest.partition(":")
        if row["error"] is None and side in fingerprints:
            per_file.setdefault((task, side), {})[fingerprint] = row["trace"]
    written = {}
    for (task, side), new in per_file.items():
        cache = TraceCache(cache_root, task, side, fingerprints[side])
        cache.save({**cache.load(), **new})
        written[f"{task}/{side}"] = len(new)
    return {"path": cache_root, "written": written}


def join_outputs(config, output: str) -> dict:
    """Every join the config's ``join`` section asks for; what each wrote."""
    manifest, traces = read_traces(output)
    out = {}
    if config.join.reasoner_records:
        out["reasoner_records"] = write_reasoner_records(config, traces, config.join.reasoner_records)
    if config.join.embedder_records:
        out["embedder_records"] = write_embedder_records(config, traces, config.join.embedder_records)
    if config.join.eval_cache:
        out["eval_cache"] = write_eval_cache(config, manifest, traces, config.join.eval_cache)
    return out
