"""The embeddings server under load: requests/s and p50 / p99 latency at several numbers of
concurrent clients, every request thinking, against serving one request at a time.

Two servers run side by side, each a fresh ``tte-fast serve`` process on a loopback port: the
continuous-batching one (``--slots`` inputs think at once) and one that serves one request at a
time (one slot: a request thinks and embeds alone, as a server calling ``encode`` per request under
a lock would). Each client is a thread that posts ``--requests`` requests of one input, one after
another. The points are interleaved (both servers at each client count, then the next repeat) and
each figure is the median over ``--repeats``. Goal on a 2-core CPU with the tiny Qwen2-VL: at 16
clients, at least 2x the requests/s of one-at-a-time serving.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager

import httpx

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(model: str, slots: int, args) -> str:
    """A ``tte-fast serve`` process with ``slots`` slots; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "tte_fast.serve.cli", "--model", model, "--port", str(port)]
    command += ["--slots", str(slots), "--device", args.device, "--log-level", "warning"]
    command += ["--max-queue", "4096"]
    if args.dtype:
        command += ["--dtype", args.dtype]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{process.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 300 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def run_clients(url: str, clients: int, requests: int, think_tokens: int, tag: str) -> dict:
    """``clients`` threads, each posting ``requests`` one-input requests in turn."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            start.wait()
            for r in range(requests):
                body = {
                    "input": f"{tag} client {c} request {r}: " + "words " * (r % 4 + c % 3),
                    "max_think_tokens": think_tokens,
                }
                t0 = time.perf_counter()
                response = http.post("/v1/embeddings", json=body)
                elapsed = time.perf_counter() - t0
                with lock:
                    (latencies if response.status_code == 200 else errors).append(
                        elapsed if response.status_code == 200 else response.text
                    )

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0][:500]}")
    return {"rps": len(latencies) / wall, "latencies": latencies}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint folder (default: the tiny random Qwen2-VL)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client per run")
    parser.add_argument("--max-think-tokens", type=int, default=16)
    parser.add_argument("--slots", type=int, default=16, help="slots of the batching server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    harness.add_common_args(parser, repeats=3, dtype=None)
    args = parser.parse_args(argv)
    modes = {"batched": args.slots, "one_at_a_time": 1}
    with ExitStack() as stack:
        model = args.model
        if model is None:
            from tte_fast.testing import build_tiny_checkpoint

            folder = stack.enter_context(tempfile.TemporaryDirectory())
            model = build_tiny_checkpoint("qwen2_vl", os.path.join(folder, "tiny_qwen2_vl"))
        urls = {mode: stack.enter_context(server(model, slots, args)) for mode, slots in modes.items()}
        for url in urls.values():  # warm-up: first prefill, cache allocation, thread pools
            run_clients(url, 2, 1, args.max_think_tokens, "warm-up")
        runs: dict[tuple[str, int], list[dict]] = {(m, c): [] for m in modes for c in args.clients}
        for repeat in range(args.repeats):
            for clients in args.clients:
                for mode, url in urls.items():
                    tag = f"{mode} repeat {repeat}"
                    runs[mode, clients].append(
                        run_clients(url, clients, args.requests, args.max_think_tokens, tag)
                    )
    rows, report = [], []
    base = {c: statistics.median(r["rps"] for r in runs["one_at_a_time", c]) for c in args.clients}
    for clients in args.clients:
        for mode in modes:
            point = runs[mode, clients]
            rps = statistics.median(r["rps"] for r in point)
            latencies = [x for r in point for x in r["latencies"]]
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            entry = {"mode": mode, "clients": clients, "rps": rps, "p50_s": p50, "p99_s": p99}
            entry["speedup_vs_one_at_a_time"] = rps / base[clients]
            entry["speedup_vs_one_at_a_time_1_client"] = rps / base[min(args.clients)]
            report.append(entry)
            rows.append(
                [
                    mode,
                    clients,
                    f"{rps:.2f}",
                    f"{p50 * 1000:.0f}",
                    f"{p99 * 1000:.0f}",
                    f"{rps / base[clients]:.2f}x",
                ]
            )
    harness.print_table(
        ["server", "clients", "requests/s", "p50 ms", "p99 ms", "vs one-at-a-time"],
        rows,
        title=f"thinking {args.max_think_tokens} tokens per request, {args.requests} requests per client",
    )
    harness.save_report(args, {"points": report})
    return {"points": report}


if __name__ == "__main__":
    main()
