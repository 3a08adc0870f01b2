"""The inputs a trace job reasons over: training records or evaluation tasks, read as the training
and evaluation jobs read them, each distinct input once.

- Training records (:func:`training_inputs`): each dataset through ``tte_fast.train.records.read_dataset``
  (our JSONL, the MMEB layout; ``max_samples`` and ``instruction`` applied), the query of each pair
  (side ``query``) and its positive (side ``target``), or the input of each reasoner record. An input
  is keyed by its side and content (text, instruction, image path), so an input many records share
  (a class label as the positive, say) is reasoned over once.
- Evaluation tasks (:func:`eval_inputs`): each task through ``tte_fast.eval.data.read_task``, its
  queries (``query``) and candidates (``target``), keyed within the task by the fingerprint the
  eval's trace cache keys them by (text, instruction and the image's bytes).

An id is ``SIDE:KEY`` (training) or ``TASK/SIDE:KEY`` (evaluation); :func:`training_key` and
:func:`eval_key` give the id of an input, for joining traces back.
"""

from __future__ import annotations

from dataclasses import dataclass

from tte_fast.eval.fingerprint import digest, input_fingerprint


@dataclass(frozen=True)
class TraceInput:
    id: str
    side: str
    input: dict  # text / image / instruction, None values dropped
    where: str  # the first record that has it (file:line, or task and record id)


@dataclass
class TraceInputs:
    """Distinct inputs in reading order, and what they were read from (for the manifest)."""

    items: list[TraceInput]
    description: dict

    @property
    def ids(self) -> list[str]:
        return [x.id for x in self.items]

    def __len__(self) -> int:
        return len(self.items)


def model_input(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if v is not None}


def training_key(side: str, raw: dict) -> str:
    x = model_input(raw)
    # A video joins the key only where given, so the keys of inputs without one stay as they were.
    video = [x["video"]] if "video" in x else []
    parts = ("trace-input", x.get("text"), x.get("instruction"), x.get("image"), *video)
    return f"{side}:" + digest(*parts)[:32]


def eval_key(task: str, side: str, raw: dict) -> str:
    return f"{task}/{side}:{input_fingerprint(raw)}"


def read_training_records(config) -> list[tuple[str, list]]:
    """(dataset name, records) per dataset of the config, as ``tte-fast train`` reads them."""
    import os

    from tte_fast.train.records import read_dataset

    job = "reasoner" if config.records == "sft" else "embedder"
    out = []
    for d in config.datasets:
        path = config.data_path(d.path)
        root = None if d.image_root is None else config.data_path(d.image_root)
        records = read_dataset(path, d.format, job, root, d.instruction)
        out.append((d.name or os.path.basename(path), records[: d.max_samples] if d.max_samples else records))
    return out


def record_sides(record) -> dict[str, dict]:
    """side -> input of a training record (a pair's query and positive, a reasoner record's input)."""
    if hasattr(record, "query"):
        return {"query": record.query, "target": record.pos}
    return {"query": record.input}


def training_inputs(config) -> TraceInputs:
    items: dict[str, TraceInput] = {}
    datasets = []
    for name, records in read_training_records(config):
        for record in records:
            sides = record_sides(record)
            for side in config.sides:
                key = training_key(side, sides[side])
                if key not in items:
                    items[key] = TraceInput(key, side, model_input(sides[side]), record.source)
        datasets.append({"name": name, "records": len(records)})
    return TraceInputs(
        list(items.values()), {"kind": "training", "records": config.records, "datasets": datasets}
    )


def eval_inputs(config) -> TraceInputs:
    from tte_fast.eval.data import read_task

    items: dict[str, TraceInput] = {}
    tasks = []
    for task in config.tasks:
        data = read_task(task, config.base_dir)
        per_side = {"query": (data.query_ids, data.queries), "target": (data.corpus_ids, data.corpus)}
        for side in config.sides:
            for record_id, raw in zip(*per_side[side]):
                key = eval_key(task.name, side, raw)
                if key not in items:
                    items[key] = TraceInput(
                        key, side, model_input(raw), f"task {task.name!r} {side} {record_id!r}"
                    )
        tasks.append({"name": task.name, "queries": len(data.queries), "candidates": len(data.corpus)})
    return TraceInputs(list(items.values()), {"kind": "eval", "tasks": tasks})


def read_inputs(config) -> TraceInputs:
    return eval_inputs(config) if config.tasks else training_inputs(config)
