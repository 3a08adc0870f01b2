"""The ``/v1/embeddings`` request: checked field by field into an :class:`EmbeddingRequest`.

Fields as OpenAI and vLLM take them (``model``, ``input``, ``messages``, ``encoding_format``,
``dimensions``, ``user``) plus ours (``think``, ``side``, ``max_think_tokens``, ``return_traces``).
A chat becomes one input: ``system`` text is its instruction, ``user`` text parts are its text, its
one ``image_url`` part its image and its one ``video_url`` part its video (as vLLM takes them).
Wrong types and unknown fields are 422, wrong values 400; every error names the field, and an
input's error names its index (``input[2]``, ``messages[1]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tte_fast.prompting.prompts import SIDES
from tte_fast.serve.errors import APIError
from tte_fast.settings.params import EncodeParams

FIELDS = (
    "model",
    "input",
    "messages",
    "encoding_format",
    "dimensions",
    "user",
    "think",
    "side",
    "max_think_tokens",
    "return_traces",
)
ENCODINGS = ("float", "base64")


@dataclass
class RawItem:
    """One input before its media are fetched: ``image`` / ``video`` is the URL / data URL / base64 string."""

    param: str  # how errors name it: input[i] or messages[i]
    text: str | None = None
    image: str | None = None
    instruction: str | None = None
    video: str | None = None


@dataclass
class EmbeddingRequest:
    items: list[RawItem]
    model: str | None = None
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    params: EncodeParams = field(default_factory=EncodeParams)  # think, side, max_think_tokens
    return_traces: bool = False
    extra: dict = field(default_factory=dict)


def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(400, f"the body is not valid JSON: {error}", code="invalid_json") from error


def parse_request(data, max_inputs: int) -> EmbeddingRequest:
    if not isinstance(data, dict):
        raise _type_error("body", data, "a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise APIError(422, f"unknown fields {unknown}; this server takes {list(FIELDS)}", param=unknown[0])
    request = EmbeddingRequest(items=[])
    request.model = _optional(data, "model", str, "a string")
    request.user = _optional(data, "user", str, "a string")
    request.encoding_format = _choice(data, "encoding_format", ENCODINGS, "float")
    side = _choice(data, "side", SIDES, "query")
    think = _optional(data, "think", bool, "true, false or null")
    request.return_traces = bool(_optional(data, "return_traces", bool, "true or false"))
    request.dimensions = _positive_int(data, "dimensions")
    max_think_tokens = _positive_int(data, "max_think_tokens")
    request.params = EncodeParams(side=side, think=think, max_think_tokens=max_think_tokens)
    request.items = _items(data)
    if not request.items:
        raise APIError(400, "no inputs: give a non-empty 'input' or 'messages'", param="input")
    if len(request.items) > max_inputs:
        raise APIError(
            400,
            f"{len(request.items)} inputs in one request; this server takes at most {max_inputs}",
            param="input",
            code="too_many_inputs",
        )
    return request


# --------------------------------------------------------------------------------------- fields
def _type_error(param: str, value, expected: str) -> APIError:
    got = "null" if value is None else type(value).__name__
    return APIError(422, f"{param!r} must be {expected}, got {got}", param=param, code="invalid_type")


def _optional(data: dict, name: str, kind: type, expected: str):
    value = data.get(name)
    # bool is an int in Python, and JSON true must not pass for a number (nor 1 for true)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise _type_error(name, value, expected)
    return value


def _choice(data: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = _optional(data, name, str, f"one of {list(choices)}")
    if value is None:
        return default
    if value not in choices:
        raise APIError(400, f"{name!r} must be one of {list(choices)}, got {value!r}", param=name)
    return value


def _positive_int(data: dict, name: str) -> int | None:
    value = _optional(data, name, int, "an integer")
    if value is not None and value < 1:
        raise APIError(400, f"{name!r} must be >= 1, got {value}", param=name)
    return value


# --------------------------------------------------------------------------------------- inputs
def _items(data: dict) -> list[RawItem]:
    raw_input, messages = data.get("input"), data.get("messages")
    has_input = raw_input is not None and raw_input != [] and raw_input != ""
    if messages is not None:
        if has_input:
            raise APIError(400, "give either 'input' or 'messages', not both", param="messages")
        return _chats(messages)
    if raw_input is None:
        raise APIError(400, "missing 'input' (or 'messages')", param="input")
    if isinstance(raw_input, str):
        return [_text_item("input", raw_input)]
    if not isinstance(raw_input, list):
        raise _type_error("input", raw_input, "a string or a list of strings")
    items = []
    for i, text in enumerate(raw_input):
        if not isinstance(text, str):
            # vLLM also takes token ids; prompts here are always rendered through the chat template
            raise _type_error(f"input[{i}]", text, "a string (token ids are not taken)")
        items.append(_text_item(f"input[{i}]", text))
    return items


def _text_item(param: str, text: str) -> RawItem:
    if not text.strip():
        raise APIError(400, f"{param} is empty", param=param, code="empty_input")
    return RawItem(param, text=text)


def _chats(messages) -> list[RawItem]:
    if not isinstance(messages, list) or not messages:
        raise _type_error("messages", messages, "a non-empty list of messages, or a list of chats")
    if all(isinstance(m, dict) for m in messages):  # one chat
        return [_chat("messages[0]", messages, "messages")]
    if all(isinstance(m, list) for m in messages):  # a list of chats
        return [_chat(f"messages[{i}]", chat, f"messages[{i}]") for i, chat in enumerate(messages)]
    raise _type_error("messages", messages, "a list of message objects, or a list of such lists (chats)")


def _chat(param: str, chat: list, where: str) -> RawItem:
    item = RawItem(param)
    texts: list[str] = []
    instructions: list[str] = []
    if not chat:
        raise APIError(400, f"{param} is an empty chat", param=param, code="empty_input")
    for j, message in enumerate(chat):
        at = f"{where}[{j}]"
        if not isinstance(message, dict):
            raise _type_error(at, message, "a message object")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user"):
            raise APIError(
                400, f"{at}: role {role!r} is not taken; a chat has system and user messages", param=param
            )
        for k, part in enumerate(_parts(at, content)):
            kind = part.get("type")
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _type_error(f"{at}.content[{k}].text", text, "a string")
                (instructions if role == "system" else texts).append(text)
            elif kind == "image_url" and role == "user":
                if item.image is not None:
                    raise APIError(400, f"{param}: one image per input", param=param, code="too_many_images")
                item.image = _image_url(f"{at}.content[{k}]", part.get("image_url"))
            elif kind == "video_url" and role == "user":
                if item.video is not None:
                    raise APIError(400, f"{param}: one video per input", param=param, code="too_many_videos")
                item.video = _image_url(f"{at}.content[{k}]", part.get("video_url"), "video_url")
            else:
                raise APIError(
                    400, f"{at}.content[{k}]: a {role} message takes no {kind!r} part", param=param
                )
    item.text = "\n".join(t for t in texts if t) or None
    item.instruction = "\n".join(t for t in instructions if t) or None
    if item.text is None and item.image is None and item.video is None:
        raise APIError(400, f"{param} has no text, image or video", param=param, code="empty_input")
    return item


def _parts(at: str, content) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise _type_error(f"{at}.content", content, "a string or a list of content parts")
    return content


def _image_url(at: str, value, part: str = "image_url") -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise _type_error(f"{at}.{part}", value, 'an object {"url": "..."} or a string')
    return url
