"""Every other /v1/* request: forwarded unchanged (method, headers, body, status,
streaming), never cached."""
from __future__ import annotations

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proxy.errors import error_response
from proxy.upstream import HOP_BY_HOP, Upstream, UpstreamError


async def passthrough(request: Request, upstream: Upstream) -> Response:
    body = await request.body()
    try:
        resp = await upstream.open(request.method, request.url.path, content=body, headers=request.headers,
                                   params=request.url.query or None)
    except UpstreamError as exc:
        return error_response(exc.status, str(exc), "upstream_error", code=exc.code)
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["x-cache-status"] = "BYPASS"
    return StreamingResponse(Upstream.iter_body(resp, decoded=False), status_code=resp.status_code, headers=headers,
                             background=BackgroundTask(resp.aclose))
