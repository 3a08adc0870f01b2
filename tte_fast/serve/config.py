"""The server's settings: the served model's name, the API key, media access and every limit."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tte_fast.settings.checks import positive_int

API_KEY_ENV = "TTE_FAST_API_KEY"
MiB = 1 << 20


@dataclass
class ServeConfig:
    """What one server allows. Every limit is per server; sizes are bytes.

    - ``max_body_bytes``: request body (413 above it).
    - ``max_inputs``: inputs (strings or chats) in one request (400 above it).
    - ``max_image_pixels``: decoded width x height of one image, checked from the image header
      before any pixel is decoded (decompression bombs; 400 above it).
    - ``max_image_bytes``: encoded size of one image read from the media folder or a remote host.
    - ``max_video_bytes``: encoded size of one video file (a data URL, the media folder, a remote host).
    - ``max_think_tokens``: the most a request may ask for (400 above it); a request that asks
      for nothing gets the checkpoint's budget, capped at this.
    - ``max_queue``: inputs waiting or running over all requests (429 when a request would pass it).
    - ``request_timeout_s``: a request still unfinished after this is cancelled (504).
    - ``media_dir``: ``file://`` images and videos (files or frame folders) are read only under this
      folder (symlinks resolved); None refuses local files.
    - ``allowed_hosts``: host names whose ``http(s)`` image URLs are fetched (no redirects, at most
      ``max_image_bytes``, ``remote_timeout_s``); empty refuses every remote URL.
    - ``matryoshka``: the checkpoint was trained for truncated embeddings, so ``dimensions`` below
      the full size truncates and renormalises; otherwise such a request is refused (400).
    """

    model_name: str = "tte"
    api_key: str | None = None
    slots: int = 16
    max_body_bytes: int = 32 * MiB
    max_inputs: int = 64
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 16 * MiB
    max_video_bytes: int = 256 * MiB
    max_think_tokens: int = 1024
    max_queue: int = 256
    request_timeout_s: float = 300.0
    media_dir: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    remote_timeout_s: float = 10.0
    matryoshka: bool = False

    def __post_init__(self):
        for name in (
            "slots",
            "max_body_bytes",
            "max_inputs",
            "max_image_pixels",
            "max_image_bytes",
            "max_video_bytes",
        ):
            positive_int(name, getattr(self, name))
        positive_int("max_think_tokens", self.max_think_tokens)
        positive_int("max_queue", self.max_queue)
        for name in ("request_timeout_s", "remote_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.media_dir is not None:
            if not os.path.isdir(self.media_dir):
                raise ValueError(f"media_dir is not a folder: {self.media_dir!r}")
            self.media_dir = os.path.realpath(self.media_dir)
        self.allowed_hosts = tuple(h.strip().lower() for h in self.allowed_hosts if h.strip())
        if self.api_key == "":
            self.api_key = None
