"""Every other /v1/* request: forwarded unchanged (method, headers, body, status,
streaming), never cached."""
from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from proxy.errors import error_response
from proxy.upstream import HOP_BY_HOP, Upstream, UpstreamError


async def passthrough(request: Request, upstream: Upstream) -> Response:
    """The request body is streamed upstream as it arrives, never held whole (uploads to
    /v1/files or /v1/audio can be hundreds of MB), with the client's Content-Length when it
    sent one, else chunked; a request without a body is sent without one."""
    length = request.headers.get("content-length", "")
    body: bytes | AsyncIterator[bytes] = b""
    size = None
    if length.isdigit():
        if int(length) > 0:
            body, size = request.stream(), int(length)
    elif "chunked" in request.headers.get("transfer-encoding", "").lower():
        body = request.stream()
    try:
        resp = await upstream.open(request.method, request.url.path, content=body, content_length=size,
                                   headers=request.headers, params=request.url.query or None)
    except ClientDisconnect:
        return Response(status_code=499)  # left while sending its body: nobody to answer
    except UpstreamError as exc:
        return error_response(exc.status, str(exc), "upstream_error", code=exc.code)
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["x-cache-status"] = "BYPASS"
    return StreamingResponse(Upstream.iter_body(resp, decoded=False), status_code=resp.status_code, headers=headers,
                             background=BackgroundTask(resp.aclose))
