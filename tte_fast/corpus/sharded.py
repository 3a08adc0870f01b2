"""The resumable, sharded job both folder jobs run (``tte-fast encode`` and ``tte-fast traces``).

:func:`run_sharded` checks the output folder against the job's manifest, skips the ids the folder
already holds, splits the rest into shards of ``shard_size`` inputs in input order and hands process
``rank`` every ``world_size``-th shard (:mod:`tte_fast.corpus.world`); the job's ``work`` writes them
through :class:`~tte_fast.corpus.store.OutputFolder`, whole shards only. A killed job resumes with
the same shard boundaries (whole shards of consecutive inputs were removed), so the resumed folder
equals an uninterrupted run's. Process 0 writes the manifest: ``running`` at the start, ``complete``
or ``partial`` with the run's summary at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from tte_fast.corpus.store import OutputFolder, manifest_differences
from tte_fast.corpus.world import World
from tte_fast.settings.checks import positive_int


class JobFolderError(RuntimeError):
    """The job refused to start (output folder in use, different model or setting)."""


@dataclass
class JobRun:
    """What one run did, for the job's summary: totals are summed over processes
    (``seconds_max``: the longest process), ``failures`` gathered from all of them."""

    inputs: int
    already_done: int
    pending: int
    totals: dict
    failures: list
    counts: dict
    world_size: int


def run_sharded(
    output: str,
    manifest: dict,
    ids: list,
    work: Callable[[list[list[int]], int], dict],
    summarize: Callable[[JobRun], dict],
    *,
    fmt: str,
    shard_size: int,
    resume: bool,
    processed: str,
    what: str,
    error: type[Exception] = JobFolderError,
    compared: tuple[str, ...] = ("model", "settings", "schema"),
) -> dict:
    """Run ``work(shards, rank)`` (shards: lists of input positions; it returns numeric stats,
    ``processed`` among them, and a ``failures`` list) on every process and return
    ``summarize(run)``. ``fmt`` is the folder format the manifest names; ``what`` names the
    folder's content in messages ("an encoding"); ``error`` is raised for a folder it refuses;
    ``compared`` are the manifest sections a resumed folder must match."""
    positive_int("shard_size", shard_size)
    folder = OutputFolder(output)
    with World() as world:
        manifest = {"format": fmt, **manifest, "world_size": world.size}
        world.agree(lambda: check_folder(folder, manifest, resume, fmt, what, error, compared))
        if world.rank == 0:
            os.makedirs(output, exist_ok=True)
            folder.remove_stale_temporaries()
            folder.write_manifest({**manifest, "status": "running", "counts": folder.counts()})
        world.barrier()
        done = folder.done_ids()
        world.barrier()  # every process has listed the folder before any writes to it
        pending = [p for p, i in enumerate(ids) if i not in done]
        shards = [pending[s : s + shard_size] for s in range(0, len(pending), shard_size)]
        mine = shards[world.rank :: world.size]
        stats: dict = {}
        world.agree(lambda: stats.update(work(mine, world.rank)), f"while writing {what}")
        totals = world.sum(stats)
        failures = [f for per_rank in world.gather(stats["failures"]) for f in per_rank]
        world.barrier()
        counts = folder.counts()
        run = JobRun(len(ids), len(done), len(pending), totals, failures, counts, world.size)
        summary = summarize(run)
        if world.rank == 0:
            status = "complete" if totals[processed] == len(pending) else "partial"
            folder.write_manifest({**manifest, "status": status, "counts": counts, "last_run": summary})
        world.barrier()
    return summary


def check_folder(
    folder: OutputFolder,
    manifest: dict,
    resume: bool,
    fmt: str,
    what: str,
    error=JobFolderError,
    compared=("model", "settings", "schema"),
) -> None:
    """Refuse a used folder without ``resume``, and with it a folder of another format, model or
    setting (every differing manifest leaf is named)."""
    saved = folder.read_manifest()
    if not resume:
        if not folder.is_empty():
            raise error(
                f"{folder.path} already holds {what}: pass --resume (resume=True) to continue it, "
                "or choose another folder"
            )
        return
    if saved is None:
        if folder.shards():
            raise error(f"{folder.path} holds shards but no manifest: cannot tell what made them")
        return
    if saved.get("format") != fmt:
        raise error(f"{folder.manifest_path}: format {saved.get('format')!r}, expected {fmt!r}")
    differences = manifest_differences(saved, manifest, compared)
    if differences:
        listed = "\n  ".join(differences[:8]) + ("\n  ..." if len(differences) > 8 else "")
        raise error(
            f"refusing to resume {folder.path}: it was written with a different model or setting:\n  {listed}"
        )
