"""Single flight: concurrent identical requests make one upstream call, in one process
and across replicas sharing Redis; cancellation frees the upstream."""
from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from backend.simulated import create_app as sim_app
from tests.conftest import eventually_async
from tests.proxy.conftest import backend_count, serving


@pytest.fixture(scope="module")
def slow_backend():
    with serving(sim_app(ttft_ms=300, tokens_per_s=40)) as url:
        yield url


def body(text: str, stream: bool, max_tokens: int = 20) -> dict:
    return {"model": "sim", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


def sse_text(raw: bytes) -> str:
    import orjson

    out = []
    for line in raw.splitlines():
        if line.startswith(b"data: {"):
            ch = orjson.loads(line[6:])
            if ch.get("choices"):
                out.append(ch["choices"][0].get("delta", {}).get("content") or "")
    return "".join(out)


async def one(hc: httpx.AsyncClient, url: str, text: str, stream: bool):
    b = body(text, stream)
    if stream:
        async with hc.stream("POST", url + "/v1/chat/completions", json=b) as r:
            raw = b"".join([c async for c in r.aiter_bytes()])
            return r.status_code, r.headers["x-cache-status"], sse_text(raw)
    r = await hc.post(url + "/v1/chat/completions", json=b)
    return r.status_code, r.headers["x-cache-status"], r.json()["choices"][0]["message"]["content"]


async def test_fifty_concurrent_identical_requests_make_one_upstream_call(make_proxy, slow_backend):
    with make_proxy(slow_backend) as url:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=60) as hc:
            res = await asyncio.gather(*[one(hc, url, "printing press history", i % 2 == 0) for i in range(50)])
        assert backend_count(slow_backend) - n0 == 1
        assert all(r[0] == 200 for r in res)
        assert len({r[2] for r in res}) == 1 and res[0][2]
        statuses = [r[1] for r in res]
        assert statuses.count("MISS") == 1 and statuses.count("COALESCED") == 49


async def _mid_stream(hc: httpx.AsyncClient, url: str, b: dict, started: asyncio.Event,
                      headers: dict | None = None) -> tuple[str, bytes]:
    """Stream `b` from `url`, setting `started` once real tokens have arrived."""
    async with hc.stream("POST", url + "/v1/chat/completions", json=b, headers=headers or {}) as r:
        raw = b""
        async for c in r.aiter_bytes():
            raw += c
            if b'"content":"' in c and b'"content":""' not in c:
                started.set()
        return r.headers["x-cache-status"], raw


async def _timed(hc: httpx.AsyncClient, url: str, b: dict) -> tuple[str, bytes, float | None, float]:
    """Stream `b` from `url`: (cache status, body, seconds to the first content, seconds to the end)."""
    t0, first, raw = time.perf_counter(), None, b""
    async with hc.stream("POST", url + "/v1/chat/completions", json=b) as r:
        async for c in r.aiter_bytes():
            raw += c
            if first is None and b'"content"' in c:
                first = time.perf_counter() - t0
    return r.headers["x-cache-status"], raw, first, time.perf_counter() - t0


async def test_streaming_followers_get_chunks_live_from_the_start(make_proxy, slow_backend):
    with make_proxy(slow_backend) as url:
        async with httpx.AsyncClient(timeout=60) as hc:
            mid_stream = asyncio.Event()  # the leader has real tokens: the follower joins mid-stream
            leader = asyncio.create_task(_mid_stream(hc, url, body("live follower", True), mid_stream))
            await asyncio.wait_for(mid_stream.wait(), 30)
            status, raw, first, total = await _timed(hc, url, body("live follower", True))
            _, lead = await leader
        assert status == "COALESCED"
        assert sse_text(raw) == sse_text(lead)  # every chunk, from the first
        assert first is not None and first < total / 2


async def test_leader_disconnect_does_not_stop_followers(make_proxy, slow_backend):
    with make_proxy(slow_backend) as url:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=60) as hc:
            started, follower_in = asyncio.Event(), asyncio.Event()

            async def leader_then_leave():
                async with hc.stream("POST", url + "/v1/chat/completions", json=body("leaving leader", True)) as r:
                    started.set()  # headers are back: the flight exists
                    await follower_in.wait()
                    async for c in r.aiter_bytes():
                        if b'"content"' in c:
                            return  # disconnect mid-stream

            lt = asyncio.create_task(leader_then_leave())
            await asyncio.wait_for(started.wait(), 30)
            ft = asyncio.create_task(one(hc, url, "leaving leader", False))
            await eventually_async(lambda: _coalesced(url) >= 1, 30, "the follower joining the leader's flight")
            follower_in.set()
            await lt
            follower = await ft
        assert follower[0] == 200 and follower[2]
        async with httpx.AsyncClient(timeout=60) as hc:
            again = await one(hc, url, "leaving leader", False)
        assert again[1] == "HIT" and again[2] == follower[2]
        assert backend_count(slow_backend) - n0 == 1


def _coalesced(url: str) -> float:
    m = re.search(r"^stratacache_coalesced_total (\S+)$", httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1))


def _inflight(url: str) -> float:
    m = re.search(r"^stratacache_inflight_upstream (\S+)$", httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1))


async def test_last_client_leaving_cancels_the_upstream_and_caches_nothing(make_proxy, slow_backend):
    with make_proxy(slow_backend) as url:
        async with httpx.AsyncClient(timeout=60) as hc:
            async with hc.stream("POST", url + "/v1/chat/completions",
                                 json=body("abandoned", True, max_tokens=400)) as r:
                async for c in r.aiter_bytes():
                    if b'"content"' in c:
                        break
            assert _inflight(url) in (0.0, 1.0)
            # 400 tokens at 40/s would take 10 s: gone well before, the upstream was cancelled
            await eventually_async(lambda: _inflight(url) == 0.0, 5, "the upstream being cancelled")
            r2 = await hc.post(url + "/v1/chat/completions", json=body("abandoned", False, max_tokens=400),
                               headers={"Cache-Control": "max-age=3600"})
        assert r2.headers["x-cache-status"] == "MISS"


async def test_replicas_sharing_redis_coalesce_through_a_lock(make_proxy, slow_backend, redis_url):
    with make_proxy(slow_backend, redis={"url": redis_url}) as a, make_proxy(slow_backend,
                                                                              redis={"url": redis_url}) as b:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=60) as hc:
            res = await asyncio.gather(*[one(hc, (a, b)[i % 2], "two replicas one call", i % 3 == 0)
                                         for i in range(12)])
        assert backend_count(slow_backend) - n0 == 1
        assert len({r[2] for r in res}) == 1
        assert all(r[1] in ("MISS", "COALESCED") for r in res)


async def test_a_replica_waiting_on_a_leader_that_stores_nothing_goes_upstream_once_the_lock_is_free(
        make_proxy, slow_backend, redis_url):
    """The leader's answer is too large to store (the same holds for an upstream error or a
    write that failed): when it lets the lock go, the replica waiting for its entry takes the
    lock and asks upstream itself, instead of waiting out follower_wait_s."""
    kw = dict(redis={"url": redis_url}, cacheability={"max_entry_bytes": 10},
              coalesce={"follower_wait_s": 600})
    with make_proxy(slow_backend, **kw) as a, make_proxy(slow_backend, **kw) as b:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=30) as hc:
            lead = asyncio.create_task(one(hc, a, "never stored", False))
            await eventually_async(lambda: _inflight(a) == 1.0, 5, "a leading")
            follow = asyncio.create_task(one(hc, b, "never stored", False))
            res = await asyncio.gather(lead, follow)
        assert [r[:2] for r in res] == [(200, "MISS"), (200, "MISS")]
        assert backend_count(slow_backend) - n0 == 2  # b went upstream after a, not alongside it


async def test_a_leader_keeps_its_lock_for_as_long_as_it_generates(make_proxy, slow_backend, redis_url):
    """The lock's expiry is short (a dead leader frees it soon) and the leader renews it while
    it runs: a generation longer than lock_ttl_s still makes one upstream call across replicas."""
    kw = dict(redis={"url": redis_url}, coalesce={"lock_ttl_s": 0.3})
    with make_proxy(slow_backend, **kw) as a, make_proxy(slow_backend, **kw) as b:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=30) as hc:
            lead = asyncio.create_task(one(hc, a, "a long answer", False))  # 0.3 s to the first token, then 0.5 s
            await eventually_async(lambda: _inflight(a) == 1.0, 5, "a leading")
            res = await asyncio.gather(lead, one(hc, b, "a long answer", False))
        assert backend_count(slow_backend) - n0 == 1
        assert res[0][2] == res[1][2]


async def test_a_replica_following_another_streams_its_answer_live(make_proxy, slow_backend, redis_url):
    with make_proxy(slow_backend, redis={"url": redis_url}) as a, make_proxy(slow_backend,
                                                                              redis={"url": redis_url}) as b:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=60) as hc:
            started = asyncio.Event()
            lead = asyncio.create_task(_mid_stream(hc, a, body("relayed live", True, max_tokens=40), started))
            await asyncio.wait_for(started.wait(), 30)
            follower, raw, first, total = await _timed(hc, b, body("relayed live", True, 40))
            status, lead_raw = await lead
            again = await hc.post(b + "/v1/chat/completions", json=body("relayed live", False, 40))
        assert (status, follower) == ("MISS", "COALESCED") and backend_count(slow_backend) - n0 == 1
        assert sse_text(raw) == sse_text(lead_raw) and raw.rstrip().endswith(b"data: [DONE]")
        assert b'"usage"' not in raw  # the leader's usage chunk is not forwarded to a client that did not ask
        # 40 tokens at 40/s: the follower's first token came long before its last, not all at once at the end
        assert first is not None and first < total / 2
        assert again.headers["x-cache-status"] == "HIT"  # the leader stored it
        assert again.json()["choices"][0]["message"]["content"] == sse_text(raw)


async def test_a_json_request_following_a_streaming_replica_gets_the_whole_answer(make_proxy, slow_backend,
                                                                                    redis_url):
    with make_proxy(slow_backend, redis={"url": redis_url}) as a, make_proxy(slow_backend,
                                                                              redis={"url": redis_url}) as b:
        n0 = backend_count(slow_backend)
        async with httpx.AsyncClient(timeout=60) as hc:
            started = asyncio.Event()
            lead = asyncio.create_task(_mid_stream(hc, a, body("json after stream", True), started))
            await asyncio.wait_for(started.wait(), 30)
            code, status, text = await one(hc, b, "json after stream", False)
            _, lead_raw = await lead
        assert (code, status) == (200, "COALESCED") and text == sse_text(lead_raw)
        assert backend_count(slow_backend) - n0 == 1


async def test_a_leader_stream_breaking_reaches_the_following_replica_as_an_error_frame(make_proxy, slow_backend,
                                                                                         redis_url):
    with make_proxy(slow_backend, redis={"url": redis_url}) as a, make_proxy(slow_backend,
                                                                              redis={"url": redis_url}) as b:
        async with httpx.AsyncClient(timeout=60) as hc:
            started = asyncio.Event()
            lead = asyncio.create_task(_mid_stream(hc, a, body("breaks upstream", True), started,
                                                   {"X-Sim-Fail": "mid-stream"}))
            await asyncio.wait_for(started.wait(), 30)
            follower = await _mid_stream(hc, b, body("breaks upstream", True), asyncio.Event())
            await lead
            after = await one(hc, b, "breaks upstream", False)
        status, raw = follower
        assert status == "COALESCED" and b'"error"' in raw and raw.rstrip().endswith(b"data: [DONE]")
        assert after[1] == "MISS"  # nothing was stored


async def test_a_replica_following_a_leader_that_died_mid_stream_ends_with_an_error(make_proxy, slow_backend,
                                                                                     redis_url):
    """The leader (played by the test: its lock and its relay stream in Redis) wrote one event
    and then died: its lock, no longer renewed, expires, and the follower ends its stream
    with an error frame instead of waiting out follower_wait_s."""
    import orjson
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    with make_proxy(slow_backend, redis={"url": redis_url}) as a, \
            make_proxy(slow_backend, redis={"url": redis_url}, coalesce={"follower_wait_s": 600}) as b:
        async with httpx.AsyncClient(timeout=30) as hc:
            assert (await one(hc, a, "a dead leader", False))[1] == "MISS"
            [entry] = [k.decode() for k in r.scan_iter("sc:e:*")]
            key = entry.removeprefix("sc:e:")
            r.delete(entry)  # as if it had never been stored
            r.set(f"sc:lock:{key}", "dead.leader", px=800)
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "sim",
                     "choices": [{"index": 0, "delta": {"content": "partial answer"}, "finish_reason": None}]}
            r.xadd(f"sc:live:{key}:dead.leader", {"e": b"data: " + orjson.dumps(chunk) + b"\n\n"})
            t0 = time.perf_counter()
            status, raw = await _mid_stream(hc, b, body("a dead leader", True), asyncio.Event())
            waited = time.perf_counter() - t0
        assert status == "COALESCED" and sse_text(raw) == "partial answer"
        assert b"stopped before it ended" in raw and raw.rstrip().endswith(b"data: [DONE]")
        assert waited < 10  # the lock's expiry, not follower_wait_s


async def test_a_follower_whose_relay_broke_finishes_from_the_entry_its_leader_stored(make_proxy, slow_backend,
                                                                                        redis_url):
    """The leader (played by the test) relayed one chunk and then its relay went silent, but
    it stored its answer: once its lock is gone, the follower sends the rest of that entry's
    chunks and [DONE], not an error."""
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    with make_proxy(slow_backend, redis={"url": redis_url}) as a, \
            make_proxy(slow_backend, redis={"url": redis_url}, coalesce={"follower_wait_s": 600}) as b:
        async with httpx.AsyncClient(timeout=30) as hc:
            _, _, whole = await one(hc, a, "a silent relay", True)
            [entry_key] = [k.decode() for k in r.scan_iter("sc:e:*")]
            key, stored = entry_key.removeprefix("sc:e:"), r.dump(entry_key)
            r.delete(entry_key)
            r.set(f"sc:lock:{key}", "silent.leader", px=800)
            first = (b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"sim","choices":'
                     b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
            r.xadd(f"sc:live:{key}:silent.leader", {"e": first})
            async with hc.stream("POST", b + "/v1/chat/completions", json=body("a silent relay", True)) as resp:
                chunks = resp.aiter_bytes()
                raw = await anext(chunks)  # b is following: the relayed chunk is out
                r.restore(entry_key, 0, stored)  # the leader's answer, stored as its lock runs out
                raw += b"".join([c async for c in chunks])
            status = resp.headers["x-cache-status"]
        assert status == "COALESCED" and sse_text(raw) == whole
        assert b'"error"' not in raw and raw.rstrip().endswith(b"data: [DONE]")
