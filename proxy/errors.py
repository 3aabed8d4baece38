"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

import orjson
from starlette.responses import Response

from cache.sse import DONE_FRAME


def error_body(message: str, type_: str = "invalid_request_error", *, param: str | None = None,
               code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_response(status: int, message: str, type_: str = "invalid_request_error", *, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message, type_, param=param, code=code), status_code=status,
                    media_type="application/json", headers=headers)


def error_frames(message: str, type_: str = "upstream_error", code: str | None = None) -> bytes:
    """What a client sees when a stream breaks after it started: an error frame then [DONE]."""
    return b"data: " + error_body(message, type_, code=code) + b"\n\n" + DONE_FRAME
