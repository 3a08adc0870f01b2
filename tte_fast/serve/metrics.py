"""Prometheus metrics of one server (its own registry, so several servers can share a process)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTES = ("/v1/embeddings", "/v1/models", "/health", "/metrics")
TOKENS_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, service):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tte_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter("tte_errors", "error answers by error type", ["type"], registry=r)
        self.latency = Histogram(
            "tte_request_latency_seconds", "answering /v1/embeddings", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inputs = Counter("tte_inputs", "inputs embedded", ["thinking"], registry=r)
        self.prompt_tokens = Counter("tte_prompt_tokens", "prompt tokens of embedded inputs", registry=r)
        self.generated_tokens = Counter("tte_generated_tokens", "tokens generated while thinking", registry=r)
        Gauge("tte_queue_depth", "inputs waiting for a slot", registry=r).set_function(service.waiting)
        Gauge("tte_running", "inputs thinking in a slot", registry=r).set_function(service.running)
        Gauge("tte_in_flight", "inputs accepted and not answered yet", registry=r).set_function(
            lambda: service.in_flight
        )
        Gauge(
            "tte_tokens_per_second", f"tokens generated per second, last {TOKENS_WINDOW_S:g} s", registry=r
        ).set_function(self.tokens_per_second)
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()

    def request(self, route: str, status: int) -> None:
        self.requests.labels(route if route in ROUTES else "other", str(status)).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def embedded(self, thinking: bool, prompt_tokens: int, generated_tokens: int) -> None:
        self.inputs.labels(str(thinking).lower()).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(generated_tokens)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, generated_tokens))
            self._trim(now)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._recent)
        return total / min(TOKENS_WINDOW_S, max(now - self._started, 1e-3))

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - TOKENS_WINDOW_S:
            self._recent.popleft()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every answer by route and status and times ``/v1/embeddings`` (plain ASGI, so the
    request's ``receive`` reaches the handler untouched and it can notice a client leaving)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("path", "")
            self.metrics.request(route, status[0])
            if route == "/v1/embeddings":
                self.metrics.latency.observe(time.perf_counter() - start)
