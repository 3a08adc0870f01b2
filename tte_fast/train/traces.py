"""Query traces written once by the frozen model (head job, ``head.traces: generate``), cached on disk.

``output_dir/traces.jsonl`` holds ``{"source", "trace"}`` per record; a rerun or a resumed run reads
it back and generates only what is missing. The main process generates; the others wait and read.
"""

from __future__ import annotations

import json
import os

from tte_fast.train.models import Loaded

TRACES_FILE = "traces.jsonl"


def fill_traces(
    records: list, loaded: Loaded, output_dir: str, accelerator, max_think_tokens, batch_size
) -> int:
    """Set ``query_trace`` on every record lacking one; returns how many were generated."""
    path = os.path.join(output_dir, TRACES_FILE)
    missing = [r for r in records if r.query_trace is None]
    generated = 0
    if accelerator.is_main_process and missing:
        cached = _read(path)
        todo = [r for r in missing if r.source not in cached]
        if todo:
            from tte_fast.model import UnifiedTTE

            # No head: the trace comes from the backbone's own generation.
            hf_model = loaded.hf_model.to(accelerator.device)
            model = UnifiedTTE(hf_model, loaded.processor, loaded.model_type, loaded.tte_config)
            inputs = [{k: v for k, v in r.query.items() if v is not None} for r in todo]
            traces = model.think(inputs, max_think_tokens=max_think_tokens, batch_size=batch_size)
            with open(path, "a", encoding="utf-8") as f:
                for record, trace in zip(todo, traces):
                    f.write(json.dumps({"source": record.source, "trace": trace}, ensure_ascii=False) + "\n")
            generated = len(todo)
    accelerator.wait_for_everyone()
    if missing:
        cached = _read(path)
        for record in missing:
            record.query_trace = cached[record.source]
    return generated


def _read(path: str) -> dict[str, str]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {row["source"]: row["trace"] for row in map(json.loads, filter(str.strip, f))}
