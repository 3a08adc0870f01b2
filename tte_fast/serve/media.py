"""Images and videos of a request, from the sources a client may name, read within the server's limits.

- ``data:image/...;base64,...`` URLs and bare base64 strings: decoded.
- ``file://PATH``: only when the server has a media folder; a relative PATH starts there, and the
  real path (symlinks resolved) must lie inside it.
- ``http(s)://``: only hosts on the operator's allowlist, no redirects followed, at most
  ``max_image_bytes``, within ``remote_timeout_s``. Nothing else is ever fetched or opened.

Every image's size is read from its header and refused above ``max_image_pixels`` before any pixel
is decoded (decompression bombs). A video comes from the same sources (``max_video_bytes``; a
``file://`` path may also be a folder of frames) and is handed on as its bytes or its path: the
model's video processor samples and decodes its frames. Failures are 400 errors naming the input.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import re
import urllib.parse

import PIL.Image

from tte_fast.media.image_io import InputError, decode_image
from tte_fast.serve.config import ServeConfig
from tte_fast.serve.errors import APIError

_BASE64 = re.compile(rb"^[A-Za-z0-9+/\s]*={0,2}\s*$")


class MediaLoader:
    def __init__(self, config: ServeConfig):
        self.config = config

    async def load(self, index: int, param: str, source: str) -> PIL.Image.Image:
        """The decoded image of input ``index`` (``param`` names it in errors)."""
        scheme = source[:8].lower()
        if scheme.startswith(("http://", "https://")):
            data = await self._fetch(param, source)
        elif scheme.startswith("file://"):
            data = await asyncio.to_thread(self._read_file, param, source[len("file://") :])
        elif scheme.startswith("data:"):
            data = _data_url(param, source)
        else:
            data = _base64(param, source, "a data URL, base64 image bytes, a file:// path or an http(s) URL")
        return await asyncio.to_thread(self._decode, index, param, data)

    async def load_video(self, param: str, source: str) -> bytes | str:
        """A video's bytes, or the path of a file or frame folder in the media folder."""
        scheme = source[:8].lower()
        cap = self.config.max_video_bytes
        if scheme.startswith(("http://", "https://")):
            return await self._fetch(param, source, cap, "video")
        if scheme.startswith("file://"):
            return await asyncio.to_thread(self._media_path, param, source[len("file://") :], cap, "video")
        if scheme.startswith("data:"):
            data = _data_url(param, source)
        else:
            data = _base64(param, source, "a data URL, base64 video bytes, a file:// path or an http(s) URL")
        if len(data) > cap:
            raise _too_big(param, cap, "video")
        return data

    # ------------------------------------------------------------------------------------- local
    def _read_file(self, param: str, raw_path: str) -> bytes:
        real = self._media_path(param, raw_path, self.config.max_image_bytes, "image")
        if os.path.isdir(real):
            raise _refused(param, "a folder is no image", "file_not_found")
        with open(real, "rb") as f:
            return f.read()

    def _media_path(self, param: str, raw_path: str, cap: int, what: str) -> str:
        """The real path of a file (or, for a video, a frame folder) inside the media folder."""
        media = self.config.media_dir
        if media is None:
            raise _refused(param, "local files are not served (no media folder)", "file_refused")
        path = os.path.join(media, urllib.parse.unquote(raw_path))  # an absolute path replaces media
        real = os.path.realpath(path)
        if os.path.commonpath([real, media]) != media:
            raise _refused(param, "the path lies outside the server's media folder", "file_refused")
        if what == "video" and os.path.isdir(real):
            return real
        if not os.path.isfile(real):
            raise _refused(param, "no such file in the media folder", "file_not_found")
        if os.path.getsize(real) > cap:
            raise _too_big(param, cap, what)
        return real

    # ------------------------------------------------------------------------------------ remote
    async def _fetch(self, param: str, url: str, cap: int | None = None, what: str = "image") -> bytes:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        if host not in self.config.allowed_hosts:
            raise _refused(param, f"{what} host {host!r} is not on the server's allowlist", "url_refused")
        import httpx

        cap, timeout = cap or self.config.max_image_bytes, self.config.remote_timeout_s
        try:
            async with (
                httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    why = f"fetching the {what} gave HTTP {response.status_code}"
                    raise _refused(param, why, "fetch_failed")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > cap:
                        raise _too_big(param, cap, what)
                return bytes(data)
        except httpx.HTTPError as error:
            why = f"fetching the {what} failed: {type(error).__name__}"
            raise _refused(param, why, "fetch_failed") from error

    # ------------------------------------------------------------------------------------ decode
    def _decode(self, index: int, param: str, data: bytes) -> PIL.Image.Image:
        limit = self.config.max_image_pixels
        try:
            with PIL.Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
        except Exception as error:  # Pillow raises many types for bad data (and its own bomb check)
            raise APIError(
                400, f"{param}: not an image Pillow can read ({error})", param=param, code="invalid_image"
            ) from error
        if width * height > limit:
            raise APIError(
                400,
                f"{param}: image of {width}x{height} = {width * height} pixels exceeds the limit of {limit}",
                param=param,
                code="image_too_large",
            )
        try:
            return decode_image(index, data)
        except InputError as error:
            raise APIError(400, f"{param}: {error}", param=param, code="invalid_image") from error


def _data_url(param: str, url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise APIError(400, f"{param}: a data URL must be 'data:<type>;base64,<data>'", param=param)
    return _base64(param, payload, "base64 after 'data:<type>;base64,'")


def _base64(param: str, text: str, expected: str) -> bytes:
    raw = text.encode("ascii", "replace")
    try:
        if not _BASE64.match(raw):
            raise binascii.Error("characters outside the base64 alphabet")
        data = base64.b64decode(raw, validate=False)
    except binascii.Error as error:
        raise APIError(
            400,
            f"{param}: bad image source, expected {expected} ({error})",
            param=param,
            code="invalid_base64",
        ) from error
    if not data:
        raise APIError(400, f"{param}: the image data is empty", param=param, code="invalid_base64")
    return data


def _refused(param: str, why: str, code: str) -> APIError:
    return APIError(400, f"{param}: {why}", param=param, code=code)


def _too_big(param: str, cap: int, what: str = "image") -> APIError:
    return APIError(400, f"{param}: the {what} is over {cap} bytes", param=param, code=f"{what}_too_large")
