"""The server over real HTTP on loopback, through the official ``openai`` client and plain httpx:
its embeddings and traces equal ``UnifiedTTE.encode`` of the same inputs, base64 decodes to the
same floats, and the side routes (/v1/models, /health, /metrics) answer."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve_cases import API_KEY, MODEL_NAME, data_url, image_chat, live_server, png_bytes  # noqa: E402

from tte_fast.model import UnifiedTTE  # noqa: E402
from tte_fast.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5
THINK = 3


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    """A second copy of the served checkpoint: what ``encode`` gives, independent of the server."""
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


@pytest.fixture(scope="module")
def base_url(vl_model):
    config = ServeConfig(model_name=MODEL_NAME, api_key=API_KEY, slots=4, max_think_tokens=64)
    with live_server(create_app(vl_model, config)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def _rows(response) -> torch.Tensor:
    return torch.tensor(np.array([d.embedding for d in response.data], dtype=np.float32))


def test_openai_client_strings_and_batches_equal_encode(client, reference):
    texts = ["a cat on a mat", "two dogs playing in the snow", "x"]
    single = client.embeddings.create(
        model=MODEL_NAME, input=texts[0], extra_body={"max_think_tokens": THINK}
    )
    batch = client.embeddings.create(
        model=MODEL_NAME, input=texts, extra_body={"max_think_tokens": THINK, "return_traces": True}
    )
    want = reference.encode(texts, think=True, max_think_tokens=THINK)
    assert [d.index for d in batch.data] == [0, 1, 2] and batch.model == MODEL_NAME
    torch.testing.assert_close(_rows(batch), want.embeddings, atol=ATOL, rtol=0)
    torch.testing.assert_close(_rows(single)[0], want.embeddings[0], atol=ATOL, rtol=0)
    assert [d.model_extra["trace"] for d in batch.data] == want.traces
    prompt = sum(len(s) for s in want.sequences) - len(texts) * (THINK + 1)
    assert batch.usage.prompt_tokens == prompt
    assert batch.usage.total_tokens == prompt + len(texts) * THINK


def test_openai_client_messages_with_images_equal_encode(client, reference):
    images = [png_bytes(1), png_bytes(2, (64, 30))]
    chats = [
        image_chat("what is shown", data_url(images[0]), instruction="Find the caption."),
        image_chat(None, base64.b64encode(images[1]).decode()),  # bare base64 is an image too
        [{"role": "user", "content": "only text in a chat"}],
    ]
    got = client.embeddings.create(
        model=MODEL_NAME,
        input=[],
        extra_body={"messages": chats, "max_think_tokens": THINK, "return_traces": True},
    )
    want = reference.encode(
        [
            {"image": images[0], "text": "what is shown", "instruction": "Find the caption."},
            {"image": images[1]},
            "only text in a chat",
        ],
        think=True,
        max_think_tokens=THINK,
    )
    torch.testing.assert_close(_rows(got), want.embeddings, atol=ATOL, rtol=0)
    assert [d.model_extra["trace"] for d in got.data] == want.traces


def test_one_chat_without_thinking_on_the_target_side(http, reference):
    image = png_bytes(3)
    body = {"messages": image_chat("a caption", data_url(image)), "side": "target", "return_traces": True}
    got = http.post("/v1/embeddings", json=body).json()
    want = reference.encode([{"image": image, "text": "a caption"}], side="target")  # targets do not think
    assert len(got["data"]) == 1 and got["data"][0]["trace"] is None
    torch.testing.assert_close(
        torch.tensor(got["data"][0]["embedding"]), want.embeddings[0], atol=ATOL, rtol=0
    )
    assert got["usage"]["prompt_tokens"] == got["usage"]["total_tokens"] == len(want.sequences[0])


def test_think_flag_overrides_the_side_default(http, reference):
    got = http.post("/v1/embeddings", json={"input": ["query text"], "think": False}).json()
    want = reference.encode(["query text"], think=False)
    torch.testing.assert_close(
        torch.tensor(got["data"][0]["embedding"]), want.embeddings[0], atol=ATOL, rtol=0
    )


def test_base64_decodes_to_the_float_answer(http):
    body = {"model": MODEL_NAME, "input": ["one", "two"], "max_think_tokens": THINK}
    floats = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for f, p in zip(floats["data"], packed["data"]):
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        assert decoded.tolist() == f["embedding"]  # bit for bit
        assert abs(np.linalg.norm(decoded) - 1) < 1e-5


def test_response_shape_is_vllms(http):
    got = http.post("/v1/embeddings", json={"input": "shape", "think": False}).json()
    assert set(got) >= {"id", "object", "created", "model", "data", "usage"}
    assert got["object"] == "list" and got["id"].startswith("embd-") and got["model"] == MODEL_NAME
    assert set(got["data"][0]) == {"index", "object", "embedding"}  # no trace unless asked
    assert got["data"][0]["object"] == "embedding"


def test_models_health_and_metrics(base_url, http, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert httpx.get(base_url + "/health").status_code == 200  # no key needed
    http.post("/v1/embeddings", json={"input": "count me", "max_think_tokens": 2})
    text = http.get("/metrics").text
    for name in (
        "tte_requests_total",
        "tte_errors_total",
        "tte_queue_depth",
        "tte_tokens_per_second",
        "tte_request_latency_seconds_bucket",
        "tte_generated_tokens_total",
    ):
        assert name in text
    ok = [line for line in text.splitlines() if line.startswith('tte_requests_total{route="/v1/embeddings"')]
    assert any('status="200"' in line and float(line.split()[-1]) >= 1 for line in ok)
    generated = next(line for line in text.splitlines() if line.startswith("tte_generated_tokens_total"))
    assert float(generated.split()[-1]) >= 2
