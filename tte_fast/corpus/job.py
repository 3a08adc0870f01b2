"""Encoding a corpus into a folder of parquet shards: resumable, sharded over torchrun processes.

:func:`encode_corpus` reads a corpus (:mod:`tte_fast.corpus.reader`), skips the ids the output folder
already holds, splits the rest into shards of ``shard_size`` inputs in input order, and encodes and
writes its share of them (:mod:`tte_fast.corpus.store`): shard j of the inputs left goes to process
``j % world_size``. A bad input (missing or corrupt image, prompt too long) is written as a row with
its error and no embedding; the job goes on.

A killed job leaves whole shards only; run it again with ``resume=True`` and it encodes the rest,
with the same shard boundaries (whole shards of consecutive inputs were removed), so the resumed
table equals an uninterrupted run's. Resuming checks the folder's manifest: a different model
(weights, config, processor, dtype, head) or setting (side, thinking, prompts, decode options,
embedding dtype, columns) is refused rather than mixed in.

Under torchrun, every process checks the manifest and process 0 writes it; the processes agree through
a gloo group (created here when none exists) before any shard is written, a process that fails makes
the others stop too, and the counts are summed at the end.
The output folder must be one folder all processes see (a shared filesystem across machines).
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from tte_fast.corpus.reader import Corpus
from tte_fast.corpus.sharded import JobFolderError, JobRun, run_sharded
from tte_fast.corpus.store import EMBEDDING_DTYPES, FORMAT, OutputFolder, shard_schema, shard_table
from tte_fast.settings.params import EncodeParams


class CorpusJobError(JobFolderError):
    """The job refused to start (output folder in use, different model or setting)."""


@dataclass(frozen=True)
class EncodeSettings(EncodeParams):
    """The encode settings and the stored embedding dtype: what the embeddings depend on besides the
    model is recorded in and checked against the manifest (the batch size is not: it changes no row)."""

    embedding_dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(
                f"embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {self.embedding_dtype!r}"
            )

    def resolved(self, model) -> dict:
        """The settings as the manifest records them, with the model's defaults filled in."""
        reasoner, embedder = roles(model)
        thinking = reasoner.config.prompts.thinks(self.side) if self.think is None else bool(self.think)
        decode = reasoner.decode_options(max_think_tokens=self.max_think_tokens, **self.decode_kwargs())
        settings = {
            "side": self.side,
            "think": thinking,
            "prompts": reasoner.config.prompts.to_dict(),
            "tte_config": _runtime_config(embedder),
            "embed_token": embedder.embed_token,
            "decode": dataclasses.asdict(decode) if thinking else None,
            "embedding_dtype": self.embedding_dtype,
        }
        if embedder is not reasoner:
            settings["embedder_prompts"] = embedder.config.prompts.to_dict()
            settings["reasoner_tte_config"] = _runtime_config(reasoner)
        return settings


def _runtime_config(model) -> dict:
    """TTEConfig fields besides the prompts and budgets (recorded on their own)."""
    skip = ("prompts", "max_think_tokens", "max_answer_tokens")
    return {k: v for k, v in model.config.to_dict().items() if k not in skip}


def roles(model) -> tuple:
    """(reasoner, embedder) of a TwoModelTTE; (model, model) of a UnifiedTTE."""
    if hasattr(model, "reasoner") and hasattr(model, "embedder"):
        return model.reasoner, model.embedder
    return model, model


def model_description(model) -> dict:
    """The model part of the manifest: a fingerprint of everything its outputs depend on (both
    models' weights, configs, processors and dtypes, and the embedding head)."""
    from tte_fast.eval.fingerprint import digest, module_fingerprint, unified_parts

    reasoner, embedder = roles(model)
    parts = [unified_parts(embedder)] + ([unified_parts(reasoner)] if reasoner is not embedder else [])
    head = module_fingerprint(getattr(embedder, "head", None))
    return {
        "fingerprint": digest("corpus-model", parts, head),
        "kind": type(model).__name__,
        "model_type": embedder.model_type,
        "dtype": parts[0]["dtype"],
        "head": embedder.config.head,
    }


def encode_corpus(
    model,
    corpus: Corpus,
    output: str,
    settings: EncodeSettings | None = None,
    *,
    shard_size: int = 256,
    resume: bool = False,
    progress: bool | None = None,
    model_path: str | None = None,
) -> dict:
    """Encode ``corpus`` into the folder ``output``; return the run's summary (every process gets
    the same one). Raises :class:`CorpusJobError` when the folder holds a different job's output
    (or any output, without ``resume``)."""
    settings = settings or EncodeSettings()
    manifest = _manifest(model, corpus, settings, model_path)
    folder = OutputFolder(output)

    def work(shards: list[list[int]], rank: int) -> dict:
        return _encode_shards(model, corpus, folder, settings, manifest, shards, progress, rank)

    return run_sharded(
        output,
        manifest,
        corpus.ids,
        work,
        lambda run: _summary(output, manifest, run),
        fmt=FORMAT,
        shard_size=shard_size,
        resume=resume,
        processed="encoded",
        what="an encoding",
        error=CorpusJobError,
    )


def _manifest(model, corpus: Corpus, settings: EncodeSettings, model_path) -> dict:
    return {
        "model": model_description(model),
        "settings": {**settings.resolved(model), "columns": corpus.columns.to_dict()},
        "schema": {"id": corpus.id_type, "embedding_dtype": settings.embedding_dtype},
        "source": {"model": model_path, "input": corpus.path, "ids": corpus.id_source, "inputs": len(corpus)},
    }


def _encode_shards(model, corpus, folder, settings, manifest, shards, progress, rank) -> dict:
    token = f"{rank:03d}{secrets.token_hex(3)}"
    stats = {"encoded": 0, "succeeded": 0, "failed": 0, "tokens": 0, "shards": 0, "seconds": 0.0}
    failures: list[dict] = []
    thinking = manifest["settings"]["think"]
    show = (rank == 0 and sys.stderr.isatty()) if progress is None else (progress and rank == 0)
    start = time.perf_counter()
    with Progress(sum(len(s) for s in shards), enabled=show) as bar:
        for positions in shards:
            ids = [corpus.ids[p] for p in positions]
            result = model.encode(
                corpus.records(positions),
                progress=False,
                on_error="skip",
                **{**settings.encode_kwargs(), "think": thinking},
            )
            errors = [_error_message(result.errors.get(j), j) for j in range(len(positions))]
            traces = result.traces if result.traces is not None else [None] * len(positions)
            traces = [None if e is not None else t for t, e in zip(traces, errors)]
            schema = shard_schema(corpus.id_type, result.embeddings.shape[1], settings.embedding_dtype)
            table = shard_table(schema, ids, result.embeddings.numpy(), traces, errors)
            folder.write_shard(f"part-{positions[0]:010d}-{token}.parquet", table)
            tokens = sum(len(s) for s in result.sequences if s is not None)
            failed = sum(e is not None for e in errors)
            failures += [
                {"id": i, "where": corpus.where(p), "error": e}
                for i, p, e in zip(ids, positions, errors)
                if e
            ]
            stats.update(
                encoded=stats["encoded"] + len(ids),
                failed=stats["failed"] + failed,
                succeeded=stats["succeeded"] + len(ids) - failed,
                tokens=stats["tokens"] + tokens,
                shards=stats["shards"] + 1,
            )
            bar.update(len(ids), tokens, failed)
    stats["seconds"] = time.perf_counter() - start
    stats["failures"] = failures[:20]
    return stats


class Progress:
    """A tqdm bar over inputs showing inputs/s, tokens/s (every token an embedding was read at:
    prompt, trace and embedding token) and the failures so far."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="encode", unit="input", disable=not enabled, dynamic_ncols=True)
        self.start, self.tokens, self.failed = time.perf_counter(), 0, 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def update(self, inputs: int, tokens: int, failed: int) -> None:
        self.tokens += tokens
        self.failed += failed
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(inputs)
        self.bar.set_postfix_str(
            f"{self.bar.n / seconds:.2f} in/s, {self.tokens / seconds:.0f} tok/s, {self.failed} failed"
        )


def _error_message(message: str | None, index: int) -> str | None:
    """The model's message without its ``input N:`` prefix (N is the index inside one shard)."""
    if message is None:
        return None
    prefix = f"input {index}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _summary(output: str, manifest: dict, run: JobRun) -> dict:
    totals = run.totals
    seconds = max(totals["seconds_max"], 1e-9)
    return {
        "output": output,
        "model_fingerprint": manifest["model"]["fingerprint"],
        "world_size": run.world_size,
        "inputs": run.inputs,
        "already_done": run.already_done,
        "encoded": totals["encoded"],
        "succeeded": totals["succeeded"],
        "failed": totals["failed"],
        "failures": run.failures[:20],
        "shards_written": totals["shards"],
        "tokens": totals["tokens"],
        "seconds": round(seconds, 3),
        "inputs_per_s": round(totals["encoded"] / seconds, 3),
        "tokens_per_s": round(totals["tokens"] / seconds, 1),
        "table": run.counts,
    }


def embeddings_of(table, dtype=np.float32) -> np.ndarray:
    """The embedding column of a shard table as an [N, D] array (failed rows: NaN)."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    rows = np.full((len(column), dim), np.nan, dtype=dtype)
    valid = ~np.asarray(column.is_null())
    flat = column.flatten().to_numpy(zero_copy_only=False)
    rows[valid] = flat.reshape(-1, dim)
    return rows
