"""Bad requests over real HTTP: each gets its OpenAI-style error with the right status, naming the
bad field or input, and the server answers the next good request as before."""

from __future__ import annotations

import json
import os

import httpx
import pytest

pytest.importorskip("fastapi")

from serve_cases import (  # noqa: E402
    API_KEY,
    MODEL_NAME,
    data_url,
    image_chat,
    image_host,
    live_server,
    png_bytes,
    solid_png,
)

from tte_fast.model import UnifiedTTE  # noqa: E402
from tte_fast.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
BODY_LIMIT = 1 << 20
IMAGE_BYTES = 200_000


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_media")
    folder = root / "media"
    folder.mkdir()
    (folder / "inside.png").write_bytes(png_bytes(5))
    (root / "secret.png").write_bytes(png_bytes(6))
    (root / "media2").mkdir()  # a sibling whose path starts with the media folder's
    (root / "media2" / "sibling.png").write_bytes(png_bytes(8))
    os.symlink(root / "secret.png", folder / "escape.png")
    return folder


@pytest.fixture(scope="module")
def pictures():
    routes = {
        "/ok.png": (200, {"Content-Type": "image/png"}, png_bytes(7)),
        "/moved.png": (302, {"Location": "/ok.png"}, b""),
        "/huge.bin": (200, {}, b"\0" * (IMAGE_BYTES + 1)),
    }
    with image_host(routes) as url:
        yield url


@pytest.fixture(scope="module")
def http(vl_model, media):
    config = ServeConfig(
        model_name=MODEL_NAME,
        api_key=API_KEY,
        slots=2,
        max_body_bytes=BODY_LIMIT,
        max_inputs=4,
        max_think_tokens=16,
        max_image_bytes=IMAGE_BYTES,
        media_dir=str(media),
        allowed_hosts=("127.0.0.1",),
    )
    with (
        live_server(create_app(vl_model, config)) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


def _error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param and param in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def _still_serving(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"input": ["still here"], "max_think_tokens": 2})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) > 0


def _post(http, body) -> httpx.Response:
    return http.post("/v1/embeddings", json=body)


def test_malformed_json(http):
    response = http.post(
        "/v1/embeddings", content=b'{"input": ["a",', headers={"Content-Type": "application/json"}
    )
    _error(response, 400, code="invalid_json")
    _still_serving(http)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": 5}, "input"),
        ({"input": ["fine", 3]}, "input[1]"),
        ({"input": "a", "think": "yes"}, "think"),
        ({"input": "a", "max_think_tokens": 2.5}, "max_think_tokens"),
        ({"input": "a", "dimensions": True}, "dimensions"),
        ({"input": "a", "thinking": True}, "thinking"),  # unknown field
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        ([1, 2], "body"),
    ],
)
def test_wrong_types_are_422(http, body, param):
    _error(_post(http, body), 422, param=param)
    _still_serving(http)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": ["ok", "  "]}, "input[1]"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "side": "document"}, "side"),
        ({"input": "a", "max_think_tokens": 17}, "max_think_tokens"),
        ({"input": ["a"] * 5}, "input"),
        ({"input": "a", "dimensions": 4}, "dimensions"),  # not a matryoshka model
        ({"messages": [[{"role": "assistant", "content": "hi"}]]}, "messages[0]"),
    ],
)
def test_bad_values_are_400_naming_the_input(http, body, param):
    _error(_post(http, body), 400, param=param)
    _still_serving(http)


def test_unknown_model_is_404(http):
    _error(_post(http, {"model": "gpt-4", "input": "a"}), 404, param="model")
    _still_serving(http)


def test_bad_base64(http):
    chats = [
        image_chat("fine", data_url(png_bytes(1))),
        image_chat("bad", "data:image/png;base64,!!not-base64!!"),
    ]
    _error(_post(http, {"messages": chats}), 400, param="messages[1]", code="invalid_base64")
    not_an_image = "data:image/png;base64,aGVsbG8gd29ybGQ="
    _error(
        _post(http, {"messages": image_chat(None, not_an_image)}),
        400,
        param="messages[0]",
        code="invalid_image",
    )
    _still_serving(http)


def test_fifty_megapixel_image_is_refused_before_decoding(http):
    bomb = solid_png(10_000, 5_000)
    assert len(bomb) < BODY_LIMIT // 4
    _error(
        _post(http, {"messages": image_chat("x", data_url(bomb))}),
        400,
        param="messages[0]",
        code="image_too_large",
    )
    _still_serving(http)


def test_oversize_body_is_413(http):
    big = {"input": ["y" * (BODY_LIMIT + 10)]}
    _error(_post(http, big), 413, code="body_too_large")
    # without a Content-Length (chunked): counted while it streams in
    chunks = iter([json.dumps(big).encode()[i : i + 65536] for i in range(0, BODY_LIMIT + 100, 65536)])
    _error(http.post("/v1/embeddings", content=chunks), 413, code="body_too_large")
    _still_serving(http)


def test_remote_urls_only_from_allowed_hosts(http, pictures, reference):
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "https://example.com/cat.png",
        "http://localhost/x.png",
    ):
        _error(_post(http, {"messages": image_chat("x", url)}), 400, param="messages[0]", code="url_refused")
    _error(_post(http, {"messages": image_chat("x", pictures + "/moved.png")}), 400, code="fetch_failed")
    _error(_post(http, {"messages": image_chat("x", pictures + "/huge.bin")}), 400, code="image_too_large")
    got = _post(http, {"messages": image_chat("x", pictures + "/ok.png"), "think": False}).json()
    want = reference.encode([{"image": png_bytes(7), "text": "x"}], think=False).embeddings[0]
    assert max(abs(a - b) for a, b in zip(got["data"][0]["embedding"], want.tolist())) < 1e-5
    _still_serving(http)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "file://../secret.png", "file://escape.png", "file://%2E%2E/secret.png"]
)
def test_paths_outside_the_media_folder_are_refused(http, url):
    _error(_post(http, {"messages": image_chat("x", url)}), 400, param="messages[0]", code="file_refused")
    _still_serving(http)


def test_a_sibling_folder_that_shares_the_name_prefix_is_outside(http, media):
    """``media2/`` beside ``media/``: its paths start with the media folder's, but lie outside it."""
    sibling = media.parent / "media2" / "sibling.png"
    for url in ("file://../media2/sibling.png", f"file://{sibling}", f"file://{media}/../media2/sibling.png"):
        _error(_post(http, {"messages": image_chat("x", url)}), 400, param="messages[0]", code="file_refused")
    _still_serving(http)


def test_files_inside_the_media_folder_are_read(http, media, reference):
    for url in ("file://inside.png", f"file://{media}/inside.png"):
        got = _post(http, {"messages": image_chat("x", url), "think": False})
        assert got.status_code == 200, got.text
        want = reference.encode([{"image": str(media / "inside.png"), "text": "x"}], think=False).embeddings[
            0
        ]
        assert max(abs(a - b) for a, b in zip(got.json()["data"][0]["embedding"], want.tolist())) < 1e-5


def test_api_key_on_every_route_but_health(http):
    base = str(http.base_url).rstrip("/")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        _error(
            httpx.post(base + "/v1/embeddings", json={"input": "a"}, headers=headers),
            401,
            code="invalid_api_key",
        )
        _error(httpx.get(base + "/v1/models", headers=headers), 401)
        _error(httpx.get(base + "/metrics", headers=headers), 401)
    assert httpx.get(base + "/health").status_code == 200
    _still_serving(http)


def test_unknown_route_is_an_openai_error(http):
    _error(http.get("/v1/nothing"), 404)
    _error(http.get("/v1/embeddings"), 405)


def test_an_image_the_engine_refuses_names_its_input(http):
    thin = png_bytes(9, (250, 1))  # aspect ratio over Qwen-VL's 200: refused when the engine loads it
    chats = [image_chat("fine", data_url(png_bytes(8))), image_chat("thin", data_url(thin))]
    error = _error(_post(http, {"messages": chats, "max_think_tokens": 2}), 400, param="messages[1]")
    assert "aspect ratio" in error["message"]
    _still_serving(http)


def test_a_text_over_the_context_is_refused_before_the_engine(http):
    over = _post(http, {"input": ["ok", "word " * 5000]})
    _error(over, 400, param="input[1]", code="context_length_exceeded")
    with_budget = _post(http, {"input": ["ok", "word " * 4000], "max_think_tokens": 16})
    _error(with_budget, 400, param="input[1]", code="invalid_input")  # fits alone, not with its budget
    _still_serving(http)
