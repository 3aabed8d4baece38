"""The proxy end to end: the stock openai SDK against a real proxy in front of a real
simulated backend."""
from __future__ import annotations

import hashlib
import time

import httpx
import openai
import pytest
from fastapi import FastAPI, Request

from tests.conftest import serving
from tests.proxy.conftest import backend_count

MSG = [{"role": "user", "content": "Tell me about tide pools."}]


def _client(url: str, key: str = "tenant-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _create(c: openai.OpenAI, messages=MSG, **kw):
    raw = c.chat.completions.with_raw_response.create(model="sim", messages=messages, max_tokens=16,
                                                      temperature=0, **kw)
    return raw.headers, raw.parse()


def _stream_text(c: openai.OpenAI, messages=MSG, **kw):
    raw = c.chat.completions.with_raw_response.create(model="sim", messages=messages, max_tokens=16,
                                                      temperature=0, stream=True, **kw)
    chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return raw.headers, text, chunks


def test_repeat_is_an_l1_hit_with_the_same_content(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = _client(url)
        n0 = backend_count(backend_url)
        h1, r1 = _create(c)
        h2, r2 = _create(c)
        assert h1["x-cache-status"] == "MISS"
        assert (h2["x-cache-status"], h2["x-cache-layer"]) == ("HIT", "L1")
        assert "age" in h2
        assert r2.choices[0].message.content == r1.choices[0].message.content
        assert r2.usage.completion_tokens == r1.usage.completion_tokens
        assert backend_count(backend_url) == n0 + 1


def test_stream_hit_replays_valid_sse_and_crosses_shapes(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = _client(url)
        m_stream = [{"role": "user", "content": "Explain how a bicycle gear works."}]
        h1, t1, _ = _stream_text(c, m_stream)
        h2, t2, chunks = _stream_text(c, m_stream)
        assert (h1["x-cache-status"], h2["x-cache-status"]) == ("MISS", "HIT")
        assert t1 and t1 == t2
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        # stored from SSE, replayed as JSON
        h3, r3 = _create(c, m_stream)
        assert h3["x-cache-status"] == "HIT" and r3.choices[0].message.content == t1
        # stored from JSON, replayed as SSE, with the usage chunk only when asked for
        _create(c)
        h4, t4, chunks4 = _stream_text(c, stream_options={"include_usage": True})
        assert h4["x-cache-status"] == "HIT"
        assert t4 == _create(c)[1].choices[0].message.content
        assert chunks4[-1].usage is not None and chunks4[-1].choices == []
        _, _, chunks5 = _stream_text(c)
        assert all(ch.usage is None for ch in chunks5)


async def test_async_sdk_miss_then_hit(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        msgs = [{"role": "user", "content": "async question"}]
        r1 = await c.chat.completions.with_raw_response.create(model="sim", messages=msgs, max_tokens=8)
        r2 = await c.chat.completions.with_raw_response.create(model="sim", messages=msgs, max_tokens=8)
        assert (r1.headers["x-cache-status"], r2.headers["x-cache-status"]) == ("MISS", "HIT")
        s = await c.chat.completions.create(model="sim", messages=msgs, max_tokens=8, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])
        assert text == r1.parse().choices[0].message.content
        await c.close()


def test_tenants_never_share_entries(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        _create(_client(url, "tenant-a"))
        h, _ = _create(_client(url, "tenant-b"))
        assert h["x-cache-status"] == "MISS"
        h, _ = _create(_client(url, "tenant-a"))
        assert h["x-cache-status"] == "HIT"


def test_sampling_parameters_and_model_are_in_the_key(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = _client(url)
        _create(c)
        raw = c.chat.completions.with_raw_response.create(model="sim", messages=MSG, max_tokens=16, temperature=0.7)
        assert raw.headers["x-cache-status"] == "MISS"
        raw = c.chat.completions.with_raw_response.create(model="sim-2", messages=MSG, max_tokens=16, temperature=0)
        assert raw.headers["x-cache-status"] == "MISS"


def test_stream_that_dies_midway_gets_an_error_frame_and_is_not_cached(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        body = {"model": "sim", "messages": [{"role": "user", "content": "doomed"}], "stream": True}
        h = {"Authorization": "Bearer t", "X-Sim-Fail": "mid-stream"}
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=h, timeout=30)
        assert r.status_code == 200
        assert b'"error"' in r.content and r.content.rstrip().endswith(b"data: [DONE]")
        r2 = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer t"}, timeout=30)
        assert r2.headers["x-cache-status"] == "MISS"


def test_upstream_error_is_forwarded_and_never_cached(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        body = {"model": "sim", "messages": [{"role": "user", "content": "fails"}]}
        for _ in range(2):
            r = httpx.post(url + "/v1/chat/completions", json=body,
                           headers={"Authorization": "Bearer t", "X-Sim-Fail": "500"}, timeout=30)
            assert r.status_code == 500
            assert "message" in r.json()["error"]
            assert r.headers["x-cache-status"] == "MISS"


def test_unreachable_upstream_is_a_502_in_the_openai_shape(make_proxy):
    with make_proxy("http://127.0.0.1:9") as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=30)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("payload, param", [
    (b"{not json", None),
    (b"[]", None),
    (b'{"model": "m"}', "messages"),
    (b'{"model": "m", "messages": []}', "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
])
def test_malformed_requests_get_a_400_in_the_openai_shape(make_proxy, backend_url, payload, param):
    with make_proxy(backend_url) as url:
        r = httpx.post(url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
        assert err["param"] == param


def test_cache_control_directives(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = _client(url)
        msgs = [{"role": "user", "content": "cache control"}]
        ns = c.chat.completions.with_raw_response.create(model="sim", messages=msgs,
                                                         extra_headers={"Cache-Control": "no-store"})
        assert ns.headers["x-cache-status"] == "BYPASS"
        assert _create(c, msgs)[0]["x-cache-status"] == "MISS"  # no-store wrote nothing
        n0 = backend_count(backend_url)
        nc = c.chat.completions.with_raw_response.create(model="sim", messages=msgs, max_tokens=16, temperature=0,
                                                         extra_headers={"Cache-Control": "no-cache"})
        assert nc.headers["x-cache-status"] == "BYPASS" or nc.headers["x-cache-status"] == "MISS"
        assert backend_count(backend_url) == n0 + 1
        ma = c.chat.completions.with_raw_response.create(model="sim", messages=msgs, max_tokens=16, temperature=0,
                                                         extra_headers={"Cache-Control": "max-age=3600"})
        assert ma.headers["x-cache-status"] == "HIT"


def test_first_bytes_arrive_before_the_upstream_finishes(make_proxy):
    from backend.simulated import create_app
    from tests.proxy.conftest import serving

    with serving(create_app(ttft_ms=0, tokens_per_s=25)) as slow, make_proxy(slow) as url:
        body = {"model": "sim", "messages": [{"role": "user", "content": "slowly"}], "max_tokens": 25, "stream": True}
        t0 = time.perf_counter()
        first = None
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            for chunk in r.iter_bytes():
                if first is None and b"content" in chunk:
                    first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        # 25 tokens at 25/s take about a second upstream; the first must not wait for the last
        assert first is not None and first < total / 2


def test_other_v1_paths_pass_through(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer x"})
        assert r.status_code == 200 and r.json()["data"]
        assert r.headers["x-cache-status"] == "BYPASS"


def test_pass_through_streams_request_bodies_with_their_framing(make_proxy):
    """An upload larger than the cached routes' body limit reaches the upstream whole, with
    its Content-Length; a chunked one stays chunked; a GET gets no body."""
    echo = FastAPI()

    @echo.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT"])
    async def seen(request: Request, path: str):
        body = await request.body()
        return {"method": request.method, "length": request.headers.get("content-length"),
                "encoding": request.headers.get("transfer-encoding"), "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest()}

    upload = bytes(range(256)) * (5 * 4096 + 7)  # 5 MB and change: over limits.max_body_bytes (4 MB)
    with serving(echo) as upstream, make_proxy(upstream) as url:
        r = httpx.post(url + "/v1/files", content=upload, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and r.headers["x-cache-status"] == "BYPASS", r.text
        assert r.json() == {"method": "POST", "length": str(len(upload)), "encoding": None, "size": len(upload),
                            "sha256": hashlib.sha256(upload).hexdigest()}

        def parts():
            yield b"first,"
            yield b"second"

        r = httpx.put(url + "/v1/things", content=parts())
        assert r.json()["encoding"] == "chunked" and r.json()["size"] == len(b"first,second")
        r = httpx.get(url + "/v1/models")
        assert r.json()["method"] == "GET" and r.json()["size"] == 0 and r.json()["encoding"] is None


def test_tool_calls_replay_in_both_shapes(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = _client(url)
        msgs = [{"role": "user", "content": "weather in Paris?"}]
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        h = {"X-Sim-Tool-Call": "1"}
        s1 = c.chat.completions.with_raw_response.create(model="sim", messages=msgs, tools=tools, stream=True,
                                                         extra_headers=h)
        list(s1.parse())
        raw = c.chat.completions.with_raw_response.create(model="sim", messages=msgs, tools=tools, extra_headers=h)
        assert raw.headers["x-cache-status"] == "HIT"
        msg = raw.parse().choices[0].message
        assert msg.tool_calls[0].function.name == "get_weather" and msg.tool_calls[0].id
        assert raw.parse().choices[0].finish_reason == "tool_calls"
        s2 = c.chat.completions.create(model="sim", messages=msgs, tools=tools, stream=True, extra_headers=h)
        args = "".join(tc.function.arguments or "" for ch in s2 if ch.choices
                       for tc in (ch.choices[0].delta.tool_calls or []))
        assert args == msg.tool_calls[0].function.arguments


def test_legacy_completions_route_is_cached(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        c = _client(url)
        r1 = c.completions.with_raw_response.create(model="sim", prompt="Once upon a time", max_tokens=8)
        r2 = c.completions.with_raw_response.create(model="sim", prompt="Once upon a time", max_tokens=8)
        assert (r1.headers["x-cache-status"], r2.headers["x-cache-status"]) == ("MISS", "HIT")
        s = c.completions.create(model="sim", prompt="Once upon a time", max_tokens=8, stream=True)
        assert "".join(ch.choices[0].text for ch in s if ch.choices) == r1.parse().choices[0].text


def test_an_upstream_cookie_is_never_replayed_to_later_requests(make_proxy):
    """The proxy keeps no cookie jar: a Set-Cookie meant for one caller must not ride
    along on another tenant's request."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.proxy.conftest import serving

    seen: list[str | None] = []

    async def models(request):
        seen.append(request.headers.get("cookie"))
        return JSONResponse({"object": "list", "data": []}, headers={"set-cookie": "session=tenant-a-secret; Path=/"})

    upstream = Starlette(routes=[Route("/v1/models", models)])
    with serving(upstream) as up, make_proxy(up) as url:
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer a"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer b"}).status_code == 200
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer c", "Cookie": "mine=1"})
    assert r.status_code == 200
    assert seen == [None, None, "mine=1"]  # the caller's own cookie passes; the upstream's is never replayed
