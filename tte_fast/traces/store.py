"""The rows of a trace job's parquet shards (the folder itself is ``tte_fast.corpus.store``'s).

```
OUTPUT/
  _manifest.json                      reasoner fingerprint, backend, prompts, decode options, inputs
  part-0000000000-<token>.parquet     one row per input (columns below)
```
- ``id``: ``SIDE:KEY`` or ``TASK/SIDE:KEY`` (``tte_fast.traces.sources``); ``side``; ``where``: the
  first record with this input.
- ``trace``: what ``UnifiedTTE.think`` returns (think prefix, reasoning, ``</think>``, answer): the
  text ``encode(traces=...)`` and the embedder records take.
- ``reasoning`` and ``answer``: the trace split at the think end, without the tags: the reasoner
  records' ``trace`` and ``answer``. A trace that never closed its think section (budget reached)
  has its text as ``reasoning`` and a null ``answer``.
- ``stop_reason`` (``eos``, ``think_budget``, ``answer_budget``, ``stop_string``),
  ``prompt_tokens``, ``generated_tokens`` (an EOS that ended the trace counted, as the engine does).
- ``error``: null on success; then the trace columns are null.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

FORMAT = "tte_fast.traces/1"
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("where", pa.string()),
        pa.field("trace", pa.string()),
        pa.field("reasoning", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("stop_reason", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("generated_tokens", pa.int64()),
        pa.field("error", pa.string()),
    ]
)


@dataclass
class Generation:
    """One input's outcome from a reasoner backend (``error`` set: the rest is None)."""

    trace: str | None = None
    stop_reason: str | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    error: str | None = None


def split_trace(trace: str, think_prefix: str, think_end: str) -> tuple[str, str | None]:
    """(reasoning, answer) of a trace: the text between the think prefix and the think end, and
    what follows the think end (None where the trace never closed its think section)."""
    body = trace[len(think_prefix) :] if think_prefix and trace.startswith(think_prefix) else trace
    if not think_end or think_end not in body:
        return body.strip(), None
    reasoning, _, answer = body.partition(think_end)
    return reasoning.strip(), answer.strip()


def shard_table(inputs: list, generations: list[Generation], think_prefix: str, think_end: str) -> pa.Table:
    """One shard's rows for ``inputs`` (``TraceInput``) and their generations, in order."""
    rows = []
    for x, g in zip(inputs, generations):
        reasoning = answer = None
        if g.error is None:
            reasoning, answer = split_trace(g.trace, think_prefix, think_end)
        rows.append(
            {
                "id": x.id,
                "side": x.side,
                "where": x.where,
                "trace": g.trace if g.error is None else None,
                "reasoning": reasoning,
                "answer": answer,
                "stop_reason": g.stop_reason if g.error is None else None,
                "prompt_tokens": g.prompt_tokens if g.error is None else None,
                "generated_tokens": g.generated_tokens if g.error is None else None,
                "error": g.error,
            }
        )
    return pa.Table.from_pylist(rows, schema=SCHEMA)
