"""TTL and grace through the proxy, on a fake clock (no sleeping for TTLs)."""
from __future__ import annotations

import time

import httpx

from tests.conftest import FakeClock, eventually
from tests.proxy.conftest import backend_count

BODY = {"model": "sim", "messages": [{"role": "user", "content": "how fresh is this?"}], "max_tokens": 8}


def ask(url, body=BODY, headers=None):
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=30)
    r.raise_for_status()
    return r.headers.get("x-cache-status"), r.headers.get("age")


def test_fresh_then_stale_within_grace_with_one_refresh_then_expired(make_proxy, backend_url):
    clock = FakeClock(time.time())
    with make_proxy(backend_url, clock=clock, ttl={"default_s": 10, "grace_s": 5}) as url:
        n0 = backend_count(backend_url)
        assert ask(url)[0] == "MISS"
        clock.advance(9)
        assert ask(url) == ("HIT", "9")
        clock.advance(2)  # age 11: past ttl, inside grace
        assert ask(url)[0] == "STALE"
        eventually(lambda: backend_count(backend_url) == n0 + 2, what="one background refresh")  # exactly one background refresh
        eventually(lambda: ask(url)[0] == "HIT", what="the refreshed entry")
        assert backend_count(backend_url) == n0 + 2
        clock.advance(16)  # past ttl + grace of the refreshed entry
        assert ask(url)[0] == "MISS"


def test_max_age_refuses_older_and_stale_entries(make_proxy, backend_url):
    clock = FakeClock(time.time())
    with make_proxy(backend_url, clock=clock, ttl={"default_s": 100, "grace_s": 50}) as url:
        ask(url)
        clock.advance(30)
        assert ask(url, headers={"Cache-Control": "max-age=60"})[0] == "HIT"
        assert ask(url, headers={"Cache-Control": "max-age=10"})[0] == "MISS"


def test_ttl_rules_by_model_and_namespace(make_proxy, backend_url):
    clock = FakeClock(time.time())
    rules = [{"namespace": "news", "ttl_s": 5}, {"model": "sim", "ttl_s": 1000}]
    with make_proxy(backend_url, clock=clock, rules=rules, ttl={"default_s": 10, "grace_s": 0}) as url:
        ask(url)
        ask(url, headers={"X-Cache-Namespace": "news"})
        clock.advance(6)
        assert ask(url)[0] == "HIT"
        assert ask(url, headers={"X-Cache-Namespace": "news"})[0] == "MISS"
