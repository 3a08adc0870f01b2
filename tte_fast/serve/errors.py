"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

| status | type | when |
| --- | --- | --- |
| 400 | ``invalid_request_error`` | malformed JSON, a bad input (see ``param``), a refused image, a limit |
| 401 | ``authentication_error`` | missing or wrong API key |
| 404 | ``not_found_error`` | unknown route or model name |
| 413 | ``invalid_request_error`` | request body over the limit |
| 422 | ``invalid_request_error`` | a field of the wrong type or an unknown field |
| 429 | ``rate_limit_error`` | the queue is full |
| 500 | ``internal_error`` | the model failed on the request |
| 504 | ``timeout_error`` | the request did not finish within the server's timeout |
"""

from __future__ import annotations

import json

from starlette.responses import Response

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered to the client; ``param`` names the field or input (``input[3]``)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "internal_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return Response(
            json.dumps(self.body()), status_code=self.status, media_type="application/json", headers=headers
        )
