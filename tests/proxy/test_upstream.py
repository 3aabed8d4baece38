"""The upstream client on its asyncio network backend, against real loopback servers."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from proxy.upstream import Upstream, UpstreamError
from tests.conftest import eventually_async, free_port


class TinyServer:
    """An HTTP/1.1 server that answers `{}` to every request and, with `close_after`,
    closes each connection that long after answering (an upstream's idle keep-alive
    timeout); with `silent`, reads requests and never answers; with `hang_up`, closes
    every connection at once."""

    def __init__(self, *, close_after: float | None = None, silent: bool = False, hang_up: bool = False) -> None:
        self.close_after = close_after
        self.silent = silent
        self.hang_up = hang_up
        self.connections = 0
        self.closed = 0
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for writer in list(self._writers):  # ends handlers still reading
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while not self.hang_up:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if self.silent:
                    await reader.read()  # until the client gives up
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
                if self.close_after is not None:
                    await asyncio.wait_for(reader.read(), self.close_after)  # an early request is a test bug
                    return
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
            self.closed += 1


def _upstream(url: str, read_timeout_s: float = 5.0) -> Upstream:
    return Upstream(url, connect_timeout_s=1.0, read_timeout_s=read_timeout_s, max_connections=4)


async def _post(up: Upstream, body: dict | None = None) -> tuple[int, bytes]:
    resp = await up.open("POST", "/v1/chat/completions", content=orjson.dumps(body or {}),
                         headers={"content-type": "application/json"})
    return resp.status_code, await Upstream.read(resp)


async def test_a_stream_arrives_chunk_by_chunk(backend_url):
    up = _upstream(backend_url)
    try:
        resp = await up.open("POST", "/v1/chat/completions", headers={"content-type": "application/json"},
                             content=orjson.dumps({"model": "sim", "stream": True, "max_tokens": 8,
                                                   "messages": [{"role": "user", "content": "hi"}]}))
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        chunks = [c async for c in Upstream.iter_body(resp, decoded=True)]
        await resp.aclose()
        assert len(chunks) > 1 and b"".join(chunks).rstrip().endswith(b"data: [DONE]")
        statuses = await asyncio.gather(*[_post(up, {"model": "sim", "messages": [{"role": "user", "content": str(i)}]})
                                          for i in range(8)])  # more at once than the pool keeps
        assert [s for s, _ in statuses] == [200] * 8
    finally:
        await up.aclose()


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused():
    srv = TinyServer(close_after=0.05)
    async with srv as url:
        up = _upstream(url)
        try:
            assert await _post(up) == (200, b"{}")
            pool = up._transport._pool

            def seen_closed() -> bool:  # the pool asks the stream whether its idle connection is still good
                return srv.closed == 1 and all(c.has_expired() for c in pool.connections)

            # within 2 s: before the pool's own 5 s keep-alive expiry could retire the connection
            await eventually_async(seen_closed, within=2, what="the pool seeing the upstream's close")
            assert await _post(up) == (200, b"{}")  # on a new connection, not an error
            assert srv.connections == 2
        finally:
            await up.aclose()


async def _failure(url: str, read_timeout_s: float = 5.0) -> UpstreamError:
    """The UpstreamError one request to `url` ends in."""
    up = _upstream(url, read_timeout_s)
    try:
        with pytest.raises(UpstreamError) as err:
            await _post(up)
        return err.value
    finally:
        await up.aclose()


async def test_an_upstream_that_never_answers_is_a_timeout():
    async with TinyServer(silent=True) as url:
        err = await _failure(url, read_timeout_s=0.2)
    assert err.status == 504 and err.code == "upstream_timeout"


async def test_nobody_listening_is_unreachable():
    err = await _failure(f"http://127.0.0.1:{free_port()}")
    assert err.status == 502 and err.code == "upstream_unreachable"


async def test_an_https_upstream_keeps_httpx_tls_backend():
    async with TinyServer(hang_up=True) as url:  # no TLS there: the handshake fails, in httpx's backend
        err = await _failure(url.replace("http://", "https://"))
    assert err.status == 502
    assert "not spoken by this backend" not in repr(err.__cause__)
