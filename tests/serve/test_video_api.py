"""``video_url`` content parts over real HTTP: a frame folder in the media folder and an encoded video
as a data URL embed as ``encode`` embeds them; bad videos are 400 errors naming their input."""

from __future__ import annotations

import base64
import importlib.util
import re

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")

from serve_cases import API_KEY, MODEL_NAME, live_server  # noqa: E402

from tte_fast.model import UnifiedTTE  # noqa: E402
from tte_fast.serve import ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
has_av = importlib.util.find_spec("av") is not None


def video_chat(url: str, text: str | None = None) -> list[dict]:
    parts = [{"type": "video_url", "video_url": {"url": url}}]
    return [{"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}]


def mp4_bytes(path) -> bytes:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        rng = np.random.default_rng(5)
        for _ in range(4):
            frame = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "clip").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / "clip" / f"{k}.png")
    return folder


@pytest.fixture(scope="module")
def http(vl_model, media):
    config = ServeConfig(model_name=MODEL_NAME, api_key=API_KEY, slots=2, media_dir=str(media))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        live_server(create_app(vl_model, config)) as url,
        httpx.Client(base_url=url, headers=headers) as client,
    ):
        yield client


def test_video_parts_equal_encode(http, media, tiny_checkpoints, tmp_path):
    chats = [video_chat("file://clip", "what happens")]
    inputs = [{"video": str(media / "clip"), "text": "what happens"}]
    if has_av:
        data = mp4_bytes(tmp_path / "clip.mp4")
        chats.append(video_chat("data:video/mp4;base64," + base64.b64encode(data).decode()))
        inputs.append({"video": data})
    response = http.post("/v1/embeddings", json={"model": MODEL_NAME, "messages": chats, "think": False})
    assert response.status_code == 200, response.text
    rows = torch.tensor([d["embedding"] for d in response.json()["data"]])
    reference = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
    torch.testing.assert_close(rows, reference.encode(inputs, think=False).embeddings, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "chat, message",
    [
        (video_chat("file://clip") + video_chat("file://clip"), "messages\\[0\\]: one video per input"),
        (video_chat("file://../outside"), "messages\\[0\\]: the path lies outside the server's media folder"),
        (video_chat("file://nothing.mp4"), "messages\\[0\\]: no such file in the media folder"),
        (video_chat("data:video/mp4;base64,AAAA"), "messages\\[0\\].*cannot read video bytes"),
        ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}], "content\\[0\\].video_url"),
    ],
)
def test_bad_videos_are_named(http, chat, message):
    response = http.post("/v1/embeddings", json={"model": MODEL_NAME, "messages": [chat], "think": False})
    assert response.status_code in (400, 422), response.text
    assert re.search(message, response.json()["error"]["message"]), response.text
