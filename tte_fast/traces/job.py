"""Generating reasoning traces into a folder of parquet shards: resumable, shared across torchrun
processes, with any reasoner backend.

:func:`generate_traces` runs the corpus job's skeleton (``tte_fast.corpus.sharded``): the inputs
the folder does not hold yet are split into shards of consecutive inputs, process ``rank`` takes
every ``world_size``-th shard, and each shard is written whole or not at all, so ``resume=True``
after a kill finishes the folder to what an uninterrupted run writes. A bad input (missing or
corrupt image, prompt too long) is a row with its error; the job goes on. Resuming checks the
manifest: another reasoner (weights, config, processor, dtype), backend, prompt or decode setting,
or side is refused rather than mixed in. Inputs are keyed by content, so resuming over records
added since generates just those.
"""

from __future__ import annotations

import secrets
import sys
import time

from tqdm.auto import tqdm

from tte_fast.corpus.sharded import JobFolderError, JobRun, run_sharded
from tte_fast.corpus.store import OutputFolder
from tte_fast.traces.store import FORMAT, SCHEMA, shard_table


class TraceJobError(JobFolderError):
    """The job refused to start (output folder in use, different reasoner or setting)."""


def generate_traces(
    reasoner,
    inputs,
    output: str,
    *,
    sides: list[str],
    shard_size: int = 256,
    resume: bool = False,
    progress: bool | None = None,
    source: dict | None = None,
) -> dict:
    """Traces of ``inputs`` (``TraceInputs``) by ``reasoner`` (a backend: ``EngineReasoner``, or
    the vLLM / Ray ones in ``tte_fast.integrations``) into the folder ``output``; the run's summary
    (every process gets the same one). ``source`` (model path, config) is recorded, not compared."""
    manifest = {
        "reasoner": reasoner.description(),
        "settings": {**reasoner.settings(), "sides": list(sides)},
        "schema": {"columns": SCHEMA.names},
        # Not compared on resuming: rows are keyed by input content, so records added since are
        # simply generated, and those already there kept.
        "source": {**(source or {}), "inputs": len(inputs), "read": inputs.description},
    }
    if hasattr(reasoner, "eval_trace_fingerprints"):
        manifest["eval_trace_fingerprints"] = reasoner.eval_trace_fingerprints(sides)
    folder = OutputFolder(output)

    def work(shards: list[list[int]], rank: int) -> dict:
        return _generate_shards(reasoner, inputs, folder, shards, progress, rank)

    return run_sharded(
        output,
        manifest,
        inputs.ids,
        work,
        lambda run: _summary(output, manifest, run),
        fmt=FORMAT,
        shard_size=shard_size,
        resume=resume,
        processed="generated",
        what="traces",
        error=TraceJobError,
        compared=("reasoner", "settings", "schema"),
    )


def _generate_shards(reasoner, inputs, folder: OutputFolder, shards, progress, rank: int) -> dict:
    token = f"{rank:03d}{secrets.token_hex(3)}"
    stats = {"generated": 0, "succeeded": 0, "failed": 0, "tokens": 0, "shards": 0, "seconds": 0.0}
    failures: list[dict] = []
    show = (rank == 0 and sys.stderr.isatty()) if progress is None else (progress and rank == 0)
    start = time.perf_counter()
    with tqdm(total=sum(map(len, shards)), desc="traces", unit="input", disable=not show) as bar:
        for positions in shards:
            batch = [inputs.items[p] for p in positions]
            generations = reasoner.generate(batch)
            table = shard_table(batch, generations, reasoner.think_prefix, reasoner.think_end)
            folder.write_shard(f"part-{positions[0]:010d}-{token}.parquet", table)
            failed = [(x, g) for x, g in zip(batch, generations) if g.error is not None]
            failures += [{"id": x.id, "where": x.where, "error": g.error} for x, g in failed]
            stats["generated"] += len(batch)
            stats["failed"] += len(failed)
            stats["succeeded"] += len(batch) - len(failed)
            stats["tokens"] += sum(g.generated_tokens or 0 for g in generations)
            stats["shards"] += 1
            bar.update(len(batch))
    stats["seconds"] = time.perf_counter() - start
    stats["failures"] = failures[:20]
    return stats


def _summary(output: str, manifest: dict, run: JobRun) -> dict:
    totals = run.totals
    seconds = max(totals["seconds_max"], 1e-9)
    return {
        "output": output,
        "reasoner_fingerprint": manifest["reasoner"]["fingerprint"],
        "backend": manifest["reasoner"]["backend"],
        "world_size": run.world_size,
        "inputs": run.inputs,
        "already_done": run.already_done,
        "generated": totals["generated"],
        "succeeded": totals["succeeded"],
        "failed": totals["failed"],
        "failures": run.failures[:20],
        "shards_written": totals["shards"],
        "generated_tokens": totals["tokens"],
        "seconds": round(seconds, 3),
        "traces_per_s": round(totals["generated"] / seconds, 3),
        "generated_tokens_per_s": round(totals["tokens"] / seconds, 1),
        "table": run.counts,
    }
