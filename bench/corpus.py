"""A corpus job killed with SIGKILL part way, then resumed: what it costs, and that nothing changes.

Three ``tte-fast encode`` runs over one corpus, each a fresh process (``python -m tte_fast.cli``):

1. ``full``: uninterrupted, into its own folder;
2. ``killed``: the same job into a second folder, SIGKILLed from outside once ``--kill-after``
   shards are on disk (whatever it had encoded past them is lost);
3. ``resumed``: the same command with ``--resume`` on the second folder.

Reported: each run's wall seconds (process start to exit, model loading included) and encoding
seconds (from its JSON summary), the rows on disk at the kill, the inputs the resumed run encoded,
and whether the resumed folder, read as one table, equals the uninterrupted one (same ids, each once,
same traces and errors, bit-identical embeddings). ``bench/throughput.py`` calls
:func:`killed_and_resumed` with its own corpus; run alone, this script builds a corpus of texts and
images and uses the tiny random Qwen2-VL unless ``--model`` is given.

    python bench/corpus.py                          # 64 inputs, shards of 8, killed after 3 shards
    python bench/corpus.py --inputs 256 --shard-size 16 --kill-after 6 --json corpus.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def write_corpus(folder: str, n: int, seed: int = 0) -> str:
    """``n`` inputs with ids in ``folder/corpus.jsonl``: texts of varied length, every third with one
    of a few small images (written beside it)."""
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "car", "tree", "house", "river", "mountain", "city", "street", "bird", "boat"]
    for k in range(4):
        size = (int(rng.integers(32, 97)), int(rng.integers(32, 97)), 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(os.path.join(folder, f"img{k}.png"))
    path = os.path.join(folder, "corpus.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            item = {"id": i, "text": " ".join(rng.choice(words, int(rng.integers(2, 24))))}
            if i % 3 == 0:
                item["image"] = f"img{i % 4}.png"
            f.write(json.dumps(item) + "\n")
    return path


def _command(model, corpus, output, flags) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tte_fast.cli",
        "encode",
        "--model",
        model,
        "--inputs",
        corpus,
        "--output",
        output,
        "--quiet",
        *flags,
    ]


def _run(command: list[str], env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command[3:5])} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def _run_and_kill(command: list[str], env: dict, output: str, shards: int) -> tuple[float, int]:
    """Start ``command``, SIGKILL it once ``shards`` shards are in ``output``; (seconds, shards then)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    while proc.poll() is None and len(glob.glob(os.path.join(output, "part-*.parquet"))) < shards:
        time.sleep(0.01)
    if proc.poll() is not None:
        raise RuntimeError(f"the job ended (exit {proc.returncode}) before {shards} shards were written")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - start, len(glob.glob(os.path.join(output, "part-*.parquet")))


def compare_tables(folder: str, reference: str) -> dict:
    """How the table in ``folder`` differs from the one in ``reference`` (both sorted by id)."""
    from tte_fast.corpus import embeddings_of
    from tte_fast.corpus.store import read_table

    a, b = read_table(folder).sort_by("id"), read_table(reference).sort_by("id")
    ids = a.column("id").to_pylist()
    same_rows = ids == b.column("id").to_pylist()
    result = {
        "rows": len(ids),
        "duplicate_ids": len(ids) - len(set(ids)),
        "same_ids": same_rows,
        "same_traces": same_rows and a.column("trace").to_pylist() == b.column("trace").to_pylist(),
        "same_errors": same_rows and a.column("error").to_pylist() == b.column("error").to_pylist(),
    }
    if same_rows:
        ea, eb = embeddings_of(a), embeddings_of(b)
        result["same_embeddings"] = bool(np.array_equal(ea, eb, equal_nan=True))
        result["max_abs_diff"] = float(np.nanmax(np.abs(ea - eb))) if ea.size else 0.0
    result["equal"] = bool(
        same_rows
        and not result["duplicate_ids"]
        and result["same_traces"]
        and result["same_errors"]
        and result.get("same_embeddings")
    )
    return result


def killed_and_resumed(
    model: str,
    corpus: str,
    workdir: str,
    *,
    shard_size: int = 8,
    kill_after: int = 3,
    flags: list[str] | tuple[str, ...] = (),
    env: dict | None = None,
) -> dict:
    """Run the job uninterrupted, then killed after ``kill_after`` shards and resumed (folders under
    ``workdir``, which must not hold them yet); ``flags`` go to every ``tte-fast encode`` run (for
    example ``--max-think-tokens 32 --batch-size 8 --device cuda``)."""
    env = env or dict(os.environ)
    flags = ["--shard-size", str(shard_size), *flags]
    full, killed = os.path.join(workdir, "full"), os.path.join(workdir, "killed")
    full_wall, full_summary = _run(_command(model, corpus, full, flags), env)
    kill_wall, shards_at_kill = _run_and_kill(_command(model, corpus, killed, flags), env, killed, kill_after)
    rows_at_kill = sum(_rows(p) for p in glob.glob(os.path.join(killed, "part-*.parquet")))
    resume_wall, resume_summary = _run(_command(model, corpus, killed, [*flags, "--resume"]), env)
    return {
        "inputs": full_summary["inputs"],
        "shard_size": shard_size,
        "full": {
            "wall_s": full_wall,
            "encode_s": full_summary["seconds"],
            "inputs_per_s": full_summary["inputs_per_s"],
            "tokens_per_s": full_summary["tokens_per_s"],
        },
        "killed": {"wall_s": kill_wall, "shards_on_disk": shards_at_kill, "rows_on_disk": rows_at_kill},
        "resumed": {
            "wall_s": resume_wall,
            "encode_s": resume_summary["seconds"],
            "already_done": resume_summary["already_done"],
            "encoded": resume_summary["encoded"],
        },
        "table": compare_tables(killed, full),
    }


def _rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(p, repeats=1, dtype=None)
    p.add_argument("--model", default=None, help="checkpoint (default: a tiny random Qwen2-VL)")
    p.add_argument("--inputs", type=int, default=64, help="corpus size (texts; every third with an image)")
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--kill-after", type=int, default=3, help="shards on disk when the job is killed")
    p.add_argument("--max-think-tokens", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tte_fast.testing import build_tiny_checkpoint

            model = build_tiny_checkpoint("qwen2_vl", os.path.join(tmp, "tiny"))
        flags = [
            "--max-think-tokens",
            str(args.max_think_tokens),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
        ] + (["--dtype", args.dtype] if args.dtype else [])
        corpus = write_corpus(tmp, args.inputs)
        r = killed_and_resumed(
            model, corpus, tmp, shard_size=args.shard_size, kill_after=args.kill_after, flags=flags
        )
    rows = [
        ("uninterrupted", f"{r['full']['wall_s']:.1f}", f"{r['full']['encode_s']:.1f}", r["inputs"], ""),
        ("killed", f"{r['killed']['wall_s']:.1f}", "", "", f"{r['killed']['rows_on_disk']} rows on disk"),
        (
            "resumed",
            f"{r['resumed']['wall_s']:.1f}",
            f"{r['resumed']['encode_s']:.1f}",
            r["resumed"]["encoded"],
            f"{r['resumed']['already_done']} skipped",
        ),
    ]
    harness.print_table(
        ["run", "wall s", "encode s", "encoded", "note"], rows, title="corpus job killed and resumed"
    )
    t = r["table"]
    diff = t.get("max_abs_diff", float("nan"))
    print(
        f"\nresumed table equals the uninterrupted one: {t['equal']} ({t['rows']} rows, "
        f"{t['duplicate_ids']} duplicate ids, max |diff| {diff:.3g})"
    )
    harness.save_report(args, {"corpus_resume": r})


if __name__ == "__main__":
    main()
