"""Many clients at once on one engine: each gets exactly its own results; a client that leaves
frees its slots; a full queue answers 429, a slow request 504, a failing model step 500; and the
server goes on serving."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

pytest.importorskip("fastapi")

from serve_cases import data_url, image_chat, live_server, png_bytes  # noqa: E402

from tte_fast.model import UnifiedTTE  # noqa: E402
from tte_fast.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5
CLIENTS = 32


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


def _case(i: int) -> tuple[dict, dict]:
    """Request i's body and the ``encode`` call that must give the same answer."""
    kind, budget = i % 4, 1 + i % 5
    if kind == 0:
        text = f"client {i} asks about topic {i * 7}"
        return {"input": text, "max_think_tokens": budget}, dict(
            inputs=[text], think=True, max_think_tokens=budget
        )
    if kind == 1:
        texts = [f"batch {i} first", f"batch {i} second, longer than the first"]
        return {"input": texts, "think": False}, dict(inputs=texts, think=False)
    image = png_bytes(100 + i, (32 + i, 40))
    if kind == 2:
        body = {"messages": [image_chat(f"picture {i}", data_url(image))], "max_think_tokens": budget}
        return body, dict(
            inputs=[{"image": image, "text": f"picture {i}"}], think=True, max_think_tokens=budget
        )
    body = {"messages": image_chat(None, data_url(image), instruction=f"task {i}"), "side": "target"}
    return body, dict(inputs=[{"image": image, "instruction": f"task {i}"}], side="target")


def test_concurrent_clients_each_get_their_own_results(vl_model, reference):
    cases = [_case(i) for i in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)
    config = ServeConfig(slots=4, max_think_tokens=16)
    with live_server(create_app(vl_model, config)) as url:

        def call(i):
            with httpx.Client(base_url=url, timeout=120) as client:
                start.wait()
                return client.post("/v1/embeddings", json={**cases[i][0], "return_traces": True})

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(call, range(CLIENTS)))
    for (_, call_args), answer in zip(cases, answers):
        assert answer.status_code == 200, answer.text
        want = reference.encode(**call_args)
        data = answer.json()["data"]
        got = torch.tensor([d["embedding"] for d in data])
        torch.testing.assert_close(got, want.embeddings, atol=ATOL, rtol=0)
        assert [d["trace"] for d in data] == (want.traces or [None] * len(data))


@pytest.fixture(scope="module")
def limited(vl_model):
    config = ServeConfig(slots=1, max_queue=2, request_timeout_s=120, max_think_tokens=3000)
    app = create_app(vl_model, config)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield app.state.service, client


def _idle(service, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if service.in_flight == 0 and service.running() == 0 and service.waiting() == 0:
            return True
        time.sleep(0.05)
    return False


def _still_serving(client) -> None:
    response = client.post("/v1/embeddings", json={"input": "next", "max_think_tokens": 2})
    assert response.status_code == 200, response.text


def _wait_in_flight(service, n: int) -> None:
    deadline = time.monotonic() + 10
    while service.running() < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.running() == n


def test_a_client_that_leaves_frees_its_slot(limited):
    service, client = limited
    # thinking 2,500 tokens takes over 10 s here; the server's own timeout is 120 s
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/embeddings", json={"input": "think long", "max_think_tokens": 2500}, timeout=0.5)
    assert _idle(service, within=3.0)
    _still_serving(client)


def test_full_queue_is_429_and_slow_request_504(limited, monkeypatch):
    service, client = limited
    monkeypatch.setattr(service.config, "request_timeout_s", 1.5)
    body = {"input": "think long", "max_think_tokens": 2500}
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.post, "/v1/embeddings", json=body)
        _wait_in_flight(service, 1)
        busy = client.post("/v1/embeddings", json={"input": ["one", "two"], "think": False})
        assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
        answer = slow.result()
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
    assert _idle(service, within=3.0)
    _still_serving(client)


def test_a_failing_decode_step_is_500_and_the_engine_lives_on(limited, monkeypatch):
    service, client = limited

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(service.embedder.runner, "step", broken)
    answer = client.post("/v1/embeddings", json={"input": "boom", "max_think_tokens": 3})
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "internal_error"
    assert "simulated device failure" in answer.json()["error"]["message"]
    monkeypatch.undo()
    assert _idle(service, within=3.0)
    _still_serving(client)


def test_a_failing_admission_prefill_is_500(limited, monkeypatch):
    """Requests taken from the queue but not yet in a slot are failed too, not left to time out."""
    service, client = limited

    def broken(batch):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(service.config, "request_timeout_s", 5.0)  # a hang would end as a 504
    monkeypatch.setattr(service.embedder, "embed_prefill", broken)
    try:
        answer = client.post("/v1/embeddings", json={"input": "boom", "think": False})
    finally:
        monkeypatch.undo()
    assert answer.status_code == 500
