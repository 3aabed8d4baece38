"""Invalidation across two proxies sharing one Redis, admin auth, stats and metrics."""
from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies.keys import tenant_from_token
from tests.conftest import FakeClock

ADMIN = {"Authorization": "Bearer adm1n"}


def ask(url, text, key="tenant-a", tags=None, namespace=None, model="sim"):
    h = {"Authorization": f"Bearer {key}"}
    if tags:
        h["X-Cache-Tags"] = tags
    if namespace:
        h["X-Cache-Namespace"] = namespace
    r = httpx.post(url + "/v1/chat/completions", headers=h, timeout=30,
                   json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8})
    r.raise_for_status()
    return r.headers["x-cache-status"]


def invalidate(url, spec):
    r = httpx.post(url + "/admin/invalidate", json=spec, headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["invalidated"]


@pytest.fixture
def pair(make_proxy, backend_url, redis_url):
    clock = FakeClock(time.time())
    kw = dict(redis={"url": redis_url}, admin_token="adm1n", clock=clock)
    with make_proxy(backend_url, **kw) as a, make_proxy(backend_url, **kw) as b:
        yield a, b, clock


def seeded(a, b, text, **kw):
    ask(a, text, **kw)
    assert ask(a, text, **kw) == "HIT" and ask(b, text, **kw) == "HIT"  # b's L1 holds it too


@pytest.mark.parametrize("spec, seed_kw, spared_kw", [
    ({"tags": ["refunds"]}, {"tags": "policy,refunds"}, {"tags": "shipping"}),
    ({"model": "sim-b"}, {"model": "sim-b"}, {"model": "sim"}),
    ({"namespace": "docs"}, {"namespace": "docs"}, {"namespace": "blog"}),
    ({"tenant": tenant_from_token("tenant-z")}, {"key": "tenant-z"}, {"key": "tenant-a"}),
])
def test_each_ban_kind_takes_effect_on_both_replicas_and_spares_the_rest(pair, spec, seed_kw, spared_kw):
    a, b, clock = pair
    seeded(a, b, "banned question", **seed_kw)
    seeded(a, b, "spared question", **spared_kw)
    assert invalidate(a, spec) >= 1
    clock.advance(1)
    assert ask(b, "banned question", **seed_kw) == "MISS"  # gone from b's L1 and from L2
    assert ask(a, "banned question", **seed_kw) == "MISS"  # each replica answers anew once
    # the answer stored by those MISSes is newer than the ban, so it is served again
    assert ask(a, "banned question", **seed_kw) == "HIT"
    for px in (b, a):
        assert ask(px, "spared question", **spared_kw) == "HIT"


def test_ban_makes_the_next_request_a_miss_on_every_replica(pair):
    a, b, clock = pair
    seeded(a, b, "refund policy for shoes", tags="refunds")
    invalidate(a, {"tags": ["refunds"]})
    clock.advance(1)
    # a's MISS stores a fresh answer in L2, yet b still answers anew after the invalidation
    assert ask(a, "refund policy for shoes") == "MISS"
    assert ask(b, "refund policy for shoes") == "MISS"
    assert ask(b, "refund policy for shoes") == "HIT"


def test_purge_one_exact_request_on_every_tenant(pair):
    a, b, _ = pair
    seeded(a, b, "purge me", key="t1")
    seeded(a, b, "purge me", key="t2")
    seeded(a, b, "keep me", key="t1")
    body = {"model": "sim", "messages": [{"role": "user", "content": "purge me"}], "max_tokens": 8}
    assert invalidate(b, {"request": body}) >= 2
    assert ask(a, "purge me", key="t1") == "MISS"
    assert ask(b, "purge me", key="t2") == "MISS"
    assert ask(b, "keep me", key="t1") == "HIT"


def test_ban_by_age_and_flush_all(pair):
    a, b, clock = pair
    seeded(a, b, "old one")
    clock.advance(100)
    seeded(a, b, "young one")
    invalidate(a, {"older_than_s": 50})
    assert ask(b, "old one") == "MISS"
    assert ask(b, "young one") == "HIT"
    clock.advance(1)
    invalidate(b, {"all": True})
    assert ask(a, "young one") == "MISS" and ask(b, "old one") == "MISS"


def test_admin_auth_and_validation(pair, make_proxy, backend_url):
    a, _, _ = pair
    assert httpx.post(a + "/admin/invalidate", json={"all": True}).status_code == 401
    assert httpx.post(a + "/admin/invalidate", json={"all": True},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(a + "/admin/stats").status_code == 401
    r = httpx.post(a + "/admin/invalidate", json={"colour": "red"}, headers=ADMIN)
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
    assert httpx.post(a + "/admin/invalidate", json={}, headers=ADMIN).status_code == 400
    with make_proxy(backend_url) as no_admin:
        assert httpx.post(no_admin + "/admin/invalidate", json={"all": True}, headers=ADMIN).status_code == 404


def test_stats_report_layers_hits_and_misses(pair):
    a, b, _ = pair
    seeded(a, b, "stats question")
    st = httpx.get(a + "/admin/stats", headers=ADMIN).json()
    assert st["layers"]["L1"]["entries"] >= 1 and st["layers"]["L1"]["bytes"] > 0
    assert st["layers"]["L2"]["entries"] >= 1
    assert st["hits"].get("L1", 0) >= 1 and st["misses"] >= 1


def _metric(text: str, name: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def test_metrics_move_after_a_miss_and_a_hit(make_proxy, backend_url):
    with make_proxy(backend_url) as url:
        before = httpx.get(url + "/metrics").text
        ask(url, "metric question")
        ask(url, "metric question")
        after = httpx.get(url + "/metrics").text
        assert _metric(after, "stratacache_hits_total") == _metric(before, "stratacache_hits_total") + 1
        assert _metric(after, "stratacache_misses_total") == _metric(before, "stratacache_misses_total") + 1
        assert "stratacache_request_seconds_bucket" in after
        assert _metric(after, "stratacache_backend_tokens_saved_total") >= 1


def test_cli_stats_and_invalidate(pair):
    import json
    import subprocess
    import sys

    a, b, clock = pair
    seeded(a, b, "cli question", tags="cli")
    env = {"STRATACACHE_ADMIN_TOKEN": "adm1n", "PATH": ""}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=60,
                           env=env)
        return r.returncode, r.stdout, r.stderr

    code, out, _ = cli("stats", "--url", a)
    assert code == 0 and json.loads(out)["layers"]["L1"]["entries"] >= 1
    code, out, _ = cli("invalidate", "--url", b, "--tags", "cli")
    assert code == 0 and json.loads(out)["invalidated"] >= 1
    clock.advance(1)
    assert ask(a, "cli question", tags="cli") == "MISS"
    env.pop("STRATACACHE_ADMIN_TOKEN")
    assert cli("stats", "--url", a)[0] == 2  # no token: refused before any request
