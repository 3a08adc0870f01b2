"""Helpers of the server's tests: a live uvicorn server on a loopback port (in a thread), images as
PNG bytes and data URLs, and a loopback HTTP server that hands out images for the remote-URL checks."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import PIL.Image

API_KEY = "test-key"
MODEL_NAME = "tiny-qwen2-vl"


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def solid_png(width: int, height: int) -> bytes:
    """A PNG of one colour: a few KB on the wire however many pixels it decodes to."""
    out = io.BytesIO()
    PIL.Image.new("L", (width, height), 7).save(out, format="PNG", optimize=False, compress_level=9)
    return out.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_chat(text: str | None, url: str, instruction: str | None = None) -> list[dict]:
    """One chat: an optional system instruction, then a user turn with the image and the text."""
    parts = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    chat = [{"role": "user", "content": parts}]
    if instruction is not None:
        chat.insert(0, {"role": "system", "content": instruction})
    return chat


@contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 (a port the OS picks) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def image_host(routes: dict[str, tuple[int, dict, bytes]]):
    """A loopback HTTP server answering GET PATH with (status, headers, body) from ``routes``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
