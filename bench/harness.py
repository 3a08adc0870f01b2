"""What every benchmark shares: common flags, timing, memory measured in a fresh process, tables and
the ``--json FILE`` report.

- Timing: wall and process-CPU seconds with the device synchronised around each run; medians of
  ``--repeats`` runs after a warm-up. Several candidates are interleaved (a, b, c, a, b, c, ...) so
  that load from other processes on a shared machine hits each of them alike.
- Memory: one point per fresh process (``run_point`` starts this script again with ``--point``), so
  a point's peak is its own: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS on CPU.
- Report: ``{"config", "device_name", "versions", ...}`` written to ``--json FILE``.

The scripts import it as a sibling module (``import harness``), run as ``python bench/NAME.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- flags -------------------------------------------------------------------------------------


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    repeats: int,
    device: str = "cpu",
    devices: Sequence[str] | None = None,
    device_help: str | None = None,
    dtype: str | None = "float32",
    dtype_flag: bool = True,
    dtype_help: str | None = None,
    point: bool = False,
) -> None:
    """--device, --dtype (unless ``dtype_flag`` is False), --repeats and --json; with ``point``, the
    hidden --point that ``run_point`` passes to the fresh process."""
    parser.add_argument("--device", default=device, choices=devices, help=device_help)
    if dtype_flag:
        parser.add_argument("--dtype", default=dtype, choices=sorted(DTYPES), help=dtype_help)
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="timed runs per point (the median is kept)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    if point:
        parser.add_argument("--point", type=json.loads, help=argparse.SUPPRESS)


def add_model_args(parser: argparse.ArgumentParser, model_type: str = "qwen2_vl") -> None:
    """--model (a checkpoint folder) and --model-type (the built-in tiny model used without one)."""
    parser.add_argument("--model", default=None, help="checkpoint folder (default: built-in tiny model)")
    parser.add_argument(
        "--model-type", default=model_type, help="tiny fixture type when --model is not given"
    )


@contextlib.contextmanager
def model_folder(args: argparse.Namespace, position_sensitive: bool = True):
    """The ``--model`` folder, or a tiny ``--model-type`` checkpoint built in a temporary folder."""
    if args.model is not None:
        yield args.model
        return
    import tempfile

    from tte_fast.testing import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        yield build_tiny_checkpoint(args.model_type, tmp, position_sensitive=position_sensitive)


def model_name(args: argparse.Namespace) -> str:
    return args.model or f"tiny {args.model_type} (random weights)"


def forward_flags(args: argparse.Namespace, *names: str) -> list[str]:
    """Command-line flags that give a fresh process the same values of ``names`` (dest spellings)."""
    flags = []
    for name in names:
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


# ---- timing ------------------------------------------------------------------------------------


@dataclass
class Timing:
    wall_s: float
    cpu_s: float  # this process, all threads: steadier than wall time when other jobs take cores


def sync(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[Timing, Any]:
    """One run of ``fn`` with the device synchronised before and after; returns (timing, result)."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return Timing(time.perf_counter() - start, time.process_time() - start_cpu), result


def median_times(
    fns: dict[str, Callable[[], Any]], device: torch.device | str, repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Median wall and CPU seconds of each callable: ``warmup`` untimed runs each (compilation,
    allocator, thread pools), then ``repeats`` interleaved timed runs."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[Timing]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(timed(fn, device)[0])
    return {
        name: Timing(statistics.median(t.wall_s for t in ts), statistics.median(t.cpu_s for t in ts))
        for name, ts in runs.items()
    }


def median_seconds(fn: Callable[[], Any], device: torch.device | str, repeats: int, warmup: int = 1) -> float:
    return median_times({"fn": fn}, device, repeats, warmup)["fn"].wall_s


# ---- memory ------------------------------------------------------------------------------------


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's RSS high-water mark in bytes."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Restart the RSS high-water mark (Linux >= 4.0) so that set-up does not count. Where that is
    refused, the peak includes set-up, which only makes every point look worse."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@dataclass
class MemoryPeak:
    base_bytes: int  # in use just before the run
    peak_bytes: int  # the most in use during it

    @property
    def growth_bytes(self) -> int:
        return self.peak_bytes - self.base_bytes


def measure_peak(fn: Callable[[], Any], device: torch.device | str) -> MemoryPeak:
    """Peak memory of one run of ``fn``: CUDA allocations on CUDA, RSS on CPU. Call it in a fresh
    process (``run_point``): the CPU figure is a process-wide high-water mark."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return MemoryPeak(base, torch.cuda.max_memory_allocated(device))
    reset_peak_rss()
    base = current_rss()
    fn()
    return MemoryPeak(base, peak_rss())


class PointFailed(RuntimeError):
    pass


def run_point(script: str, point: dict, flags: Sequence[str] = (), env: dict[str, str] | None = None) -> dict:
    """Run ``script --point JSON FLAGS`` in a fresh interpreter; return the JSON object its last
    stdout line holds (see ``emit_point``)."""
    command = [sys.executable, script, "--point", json.dumps(point), *flags]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        name = os.path.basename(script)
        raise PointFailed(f"{name} point {point} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit_point(result: dict) -> None:
    """The fresh process's answer to ``run_point``."""
    print(json.dumps(result), flush=True)


# ---- output ------------------------------------------------------------------------------------


def print_table(header: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned, widths fitted to
    the cells (format numbers before passing them)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip()

    if title:
        print(f"\n{title}")
    print(line(cells[0]))
    print("-" * len(line(cells[0])))
    for row in cells[1:]:
        print(line(row))


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "triton", "pillow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def config(args: argparse.Namespace) -> dict:
    """The run's settings as the report records them (internal flags left out)."""
    return {k: v for k, v in vars(args).items() if k not in ("json", "point")}


def save_report(args: argparse.Namespace, report: dict) -> None:
    """Write ``report`` to ``--json FILE`` when given, with the config, device name and versions
    (keys of ``report`` win)."""
    if not args.json:
        return
    payload = {"config": config(args), "device_name": device_name(args.device), "versions": versions()}
    payload.update(report)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
