"""The upstream (generation backend) client: one pooled httpx transport.

Requests go straight to `httpx.AsyncHTTPTransport` (the connection pool under
`httpx.AsyncClient`), not through the client: a proxy wants none of the client's
per-request work. The client keeps a cookie jar, so a `Set-Cookie` from the upstream
would ride along on every later request, whichever tenant sent it; it follows no
redirects here anyway, and its auth and hook plumbing cost ~0.25 ms of a miss's time
to first token on this machine (bench/hit_latency.py). Timeouts are the transport's
per-request extension, as the client would set them.

For a plain-HTTP upstream the transport's connection pool runs on
`proxy.upstream_net.AsyncioBackend` (asyncio streams) instead of httpx's AnyIO one: the
same pool and HTTP/1.1 code, about 0.5 ms sooner to the response headers here.

Transport failures are translated at this edge into `UpstreamError` with the status a
client should see (502 connect/protocol, 504 timeout); HTTP errors from the upstream
are returned as responses, never raised, so they pass through as the upstream sent them.
"""
from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping

import httpcore
import httpx

from proxy.upstream_net import AsyncioBackend

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding"})


class UpstreamError(RuntimeError):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def map_transport_error(exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(504, f"upstream timed out ({type(exc).__name__})", "upstream_timeout")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(502, "upstream unreachable", "upstream_unreachable")
    return UpstreamError(502, f"upstream failed: {type(exc).__name__}", "upstream_error")


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-cache-")}


class Upstream:
    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        # The transport retries only connection failures: nothing was sent, so it is safe.
        # Once a byte is on the wire the request is never retried.
        limits, retries = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections), 2
        self._transport = httpx.AsyncHTTPTransport(retries=retries, http2=False, limits=limits)
        if self.base_url.startswith("http://"):
            # The transport's own pool, rebuilt with the same settings on asyncio streams.
            self._transport._pool = httpcore.AsyncConnectionPool(
                max_connections=limits.max_connections, max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry, http1=True, http2=False, retries=retries,
                network_backend=AsyncioBackend())
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0,
                                      pool=connect_timeout_s).as_dict()

    async def open(self, method: str, path: str, *, content: bytes | AsyncIterable[bytes], headers: Mapping[str, str],
                   params: str | None = None, content_length: int | None = None) -> httpx.Response:
        """Send a request and return the response with its body unread (stream it or read it).
        `content` may be a stream of chunks: sent with `content_length` as its Content-Length
        when given, else chunked. Raises UpstreamError on transport failure."""
        url = self.base_url + path + (f"?{params}" if params else "")
        sent = forward_headers(headers)
        if content_length is not None and not isinstance(content, bytes):
            sent["content-length"] = str(content_length)  # httpx then sends no Transfer-Encoding
        try:
            req = httpx.Request(method, url, content=content, headers=sent, extensions={"timeout": self._timeout})
            resp = await self._transport.handle_async_request(req)
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from exc
        resp.request = req
        return resp

    @staticmethod
    async def iter_body(resp: httpx.Response, *, decoded: bool) -> AsyncIterator[bytes]:
        """Body chunks as they arrive: decoded (for parsing) or raw (for pass-through,
        with the upstream's Content-Encoding kept)."""
        try:
            async for chunk in (resp.aiter_bytes() if decoded else resp.aiter_raw()):
                yield chunk
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from exc

    @staticmethod
    async def read(resp: httpx.Response) -> bytes:
        try:
            return await resp.aread()
        except httpx.HTTPError as exc:
            raise map_transport_error(exc) from exc
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()
