"""Fault tolerance and abuse resistance: Redis dying under load, hostile inputs, limits."""
from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.simulated import create_app as sim_app
from tests.conftest import eventually, eventually_async
from tests.proxy.conftest import serving


def chat(text: str, **kw) -> dict:
    return {"model": "sim", "messages": [{"role": "user", "content": text}], "max_tokens": 8, **kw}


async def test_redis_killed_during_load_fails_no_request_and_recovers(make_proxy, backend_url, redis_proc,
                                                                       redis_url):
    with make_proxy(backend_url, redis={"url": redis_url, "timeout_s": 0.2, "breaker_reset_s": 0.5}) as url:
        failures, statuses = [], []
        sem = asyncio.Semaphore(8)

        async def one(hc, i):
            async with sem:
                r = await hc.post(url + "/v1/chat/completions", json=chat(f"question {i % 40}"))
                (failures if r.status_code != 200 else statuses).append(r.headers.get("x-cache-status"))

        async with httpx.AsyncClient(timeout=30) as hc:
            first = [asyncio.create_task(one(hc, i)) for i in range(80)]
            await asyncio.gather(*first[:40])
            redis_proc.kill()
            await asyncio.gather(*first[40:], *[one(hc, i) for i in range(80, 160)])
            redis_proc.start()
            # L2 comes back without a restart: an entry stored now is visible to a second proxy
            async def l2_is_back() -> bool:
                await one(hc, 1000)
                with make_proxy(backend_url, redis={"url": redis_url}) as other:
                    r = await hc.post(other + "/v1/chat/completions", json=chat("question 1000"))
                return r.headers.get("x-cache-layer") == "L2"

            await eventually_async(l2_is_back, 10, "L2 coming back", interval=0.3)
        assert failures == []
        assert len(statuses) >= 160


@contextlib.asynccontextmanager
async def two_replicas(make_proxy, backend_url: str, redis_url: str):
    """Two proxies sharing `redis_url` (short Redis deadlines), and `ask(proxy, text)`, which
    asserts the answer is a 200 and returns it."""
    redis_cfg = {"url": redis_url, "timeout_s": 0.3, "breaker_reset_s": 0.3}
    with make_proxy(backend_url, redis=redis_cfg) as a, make_proxy(backend_url, redis=redis_cfg) as b:
        async with httpx.AsyncClient(timeout=30) as hc:
            async def ask(url: str, text: str) -> httpx.Response:
                r = await hc.post(url + "/v1/chat/completions", json=chat(text))
                assert r.status_code == 200, r.text
                return r

            yield a, b, ask


async def test_replicas_on_a_sentinel_url_share_l2_through_a_failover(make_proxy, backend_url, sentinel_group):
    """Two proxies find the master through Redis Sentinel; after a failover they follow the
    new master, no request fails meanwhile, and L2 is shared again."""
    async with two_replicas(make_proxy, backend_url, sentinel_group.url) as (a, b, ask):
        assert (await ask(a, "before the failover")).headers["x-cache-status"] == "MISS"
        assert (await ask(b, "before the failover")).headers.get("x-cache-layer") == "L2"
        old_port = sentinel_group.master_port()
        new_port = await asyncio.to_thread(sentinel_group.failover)
        assert new_port != old_port
        with redis.Redis(port=old_port) as old:  # until demoted, the old master still takes writes
            await eventually_async(lambda: old.execute_command("ROLE")[0] == b"slave", 15, "old master demoted")
        with redis.Redis(port=new_port) as new:
            keys_before = new.dbsize()
        n = 0

        async def shared_again() -> bool:
            nonlocal n
            n += 1
            await ask(a, f"after the failover {n}")
            return (await ask(b, f"after the failover {n}")).headers.get("x-cache-layer") == "L2"

        await eventually_async(shared_again, 20, "L2 shared through the new master", interval=0.3)
        with redis.Redis(port=new_port) as new:
            assert new.dbsize() > keys_before  # the entries went to the new master


async def test_replicas_on_a_cluster_url_lose_no_request_when_a_master_dies(make_proxy, backend_url, redis_cluster):
    """Two proxies on a redis+cluster:// URL: killing one of the three masters fails no
    request (its keys are misses); once it is back, L2 is shared again without a restart."""
    redis_cluster.flush()
    async with two_replicas(make_proxy, backend_url, redis_cluster.url) as (a, b, ask):
        for i in range(12):
            await ask(a, f"shared {i}")
        assert all([(await ask(b, f"shared {i}")).headers.get("x-cache-layer") == "L2" for i in range(12)])
        dead = redis_cluster.nodes[0]
        dead.kill()
        try:
            await asyncio.gather(*[ask(px, f"during {i}") for i in range(20) for px in (a, b)])
        finally:
            dead.start()
        n = 0

        async def shared_again() -> bool:
            nonlocal n
            n += 1
            texts = [f"after {n}.{i}" for i in range(6)]  # spread over the slots: one lands on the returned master
            for t in texts:
                await ask(a, t)
            layers = [(await ask(b, t)).headers.get("x-cache-layer") for t in texts]
            return layers == ["L2"] * len(texts)

        await eventually_async(shared_again, 30, "L2 shared again on every master", interval=0.3)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                       lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                                                 max_size=4), max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "bogus", 3]),
                                 "content": JSONISH})
BODY = st.fixed_dictionaries({}, optional={
    "model": JSONISH | st.just("sim"), "messages": st.lists(MESSAGE, max_size=3) | JSONISH,
    "max_tokens": JSONISH, "temperature": JSONISH, "stream": JSONISH, "n": JSONISH, "stop": JSONISH,
    "stream_options": JSONISH, "tools": JSONISH, "seed": JSONISH})


@pytest.fixture(scope="module")
def fuzz_proxy(backend_url, tmp_path_factory):
    from proxy.app import create_app
    from proxy.settings import load_settings

    s = load_settings(None, {"upstream": backend_url, "semantic": {"enabled": False}, "redis": {"url": ""},
                             "state_dir": str(tmp_path_factory.mktemp("fuzz"))})
    with serving(create_app(s)) as url:
        yield url


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, headers=st.dictionaries(st.sampled_from(["Cache-Control", "X-Cache-Namespace", "X-Cache-Tags"]),
                                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                                  max_size=40).map(str.strip), max_size=3))
def test_fuzzed_requests_never_get_a_500(fuzz_proxy, body, headers):
    r = httpx.post(fuzz_proxy + "/v1/chat/completions", content=json.dumps(body), headers=headers, timeout=30)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert "message" in r.json()["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzzed_bytes_never_get_a_500(fuzz_proxy, raw):
    r = httpx.post(fuzz_proxy + "/v1/completions", content=raw, timeout=30)
    assert r.status_code < 500


def test_limits_answer_in_the_openai_shape(make_proxy, backend_url):
    with make_proxy(backend_url, limits={"max_body_bytes": 2000, "max_tokens_ceiling": 64}) as url:
        r = httpx.post(url + "/v1/chat/completions", json=chat("x" * 5000))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(url + "/v1/chat/completions", json=chat("hi", max_tokens=65))
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def _raw_exchange(url: str, head: bytes, body_part: bytes) -> bytes:
    """Send a request's head and the start of its body on a raw socket, never finishing the
    body, and return what the server answers (a server that waits for the rest times out)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(head + body_part)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_body_is_refused_before_it_is_read_whole(make_proxy, backend_url, framing):
    with make_proxy(backend_url, limits={"max_body_bytes": 2000}) as url:
        if framing == "content-length":  # declared 10 GB: refused at once, not buffered
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" \
                   b"content-length: 10000000000\r\n\r\n"
            part = b'{"model": "sim", "messages": ['
        else:  # no length: refused once 2000 bytes have arrived, while more would follow
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" \
                   b"transfer-encoding: chunked\r\n\r\n"
            part = b"".join(b"3e8\r\n" + b" " * 1000 + b"\r\n" for _ in range(3))
        answer = _raw_exchange(url, head, part)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"413", answer[:200]
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
        # and the proxy goes on serving
        assert httpx.post(url + "/v1/chat/completions", json=chat("hi")).status_code == 200


def test_an_unexpected_error_on_a_cached_route_is_a_500_in_the_openai_shape(make_proxy, backend_url, monkeypatch):
    import proxy.completions

    async def broken(*_args):
        raise KeyError("a bug")

    monkeypatch.setattr(proxy.completions, "_handle", broken)
    with make_proxy(backend_url) as url:
        r = httpx.post(url + "/v1/chat/completions", json=chat("hi"))
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error" and "KeyError" in r.json()["error"]["message"]
        assert httpx.get(url + "/healthz").status_code == 200


async def test_per_tenant_concurrency_limit_is_a_429_with_retry_after(make_proxy):
    with serving(sim_app(ttft_ms=500, tokens_per_s=1000)) as slow, \
            make_proxy(slow, limits={"tenant_concurrency": 2}) as url:
        async with httpx.AsyncClient(timeout=30) as hc:
            res = await asyncio.gather(*[hc.post(url + "/v1/chat/completions", json=chat(f"distinct {i}"),
                                                 headers={"Authorization": "Bearer greedy"}) for i in range(5)])
            other = await hc.post(url + "/v1/chat/completions", json=chat("polite"),
                                  headers={"Authorization": "Bearer polite"})
        codes = sorted(r.status_code for r in res)
        assert codes.count(200) == 2 and codes.count(429) == 3
        limited = next(r for r in res if r.status_code == 429)
        assert limited.headers["retry-after"] and limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert other.status_code == 200  # one tenant's burst does not hurt another


def test_sigterm_drains_an_in_flight_stream(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import free_port

    with serving(sim_app(ttft_ms=0, tokens_per_s=20)) as slow:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--upstream", slow, "--port", str(port),
                                 "--redis-url", "", "--no-semantic", "--state-dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            def healthy() -> bool:
                assert proc.poll() is None, "the proxy exited"
                try:
                    return httpx.get(url + "/healthz").status_code == 200
                except httpx.HTTPError:
                    return False

            eventually(healthy, 60, "the proxy starting", interval=0.1)
            body = {"model": "sim", "messages": [{"role": "user", "content": "drain me"}], "max_tokens": 30,
                    "stream": True}
            raw = b""
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
                for chunk in r.iter_bytes():
                    if not raw:
                        os.kill(proc.pid, signal.SIGTERM)  # mid-stream: ~1.5 s of tokens still to come
                    raw += chunk
            assert raw.rstrip().endswith(b"data: [DONE]") and b'"finish_reason":"' in raw
            assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        finally:
            if proc.poll() is None:
                proc.kill()
