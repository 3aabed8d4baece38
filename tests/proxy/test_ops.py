"""Operations: config validation at start, request ids and access logs, L3 metrics,
per-namespace thresholds."""
from __future__ import annotations

import logging
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.conftest import SEMANTIC_ON


def test_a_bad_config_fails_at_start_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("semantic:\n  treshold: 0.9\nttl:\n  default_s: -5\n")
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "semantic.treshold" in r.stderr and "ttl.default_s" in r.stderr


def test_the_example_config_is_valid():
    from proxy.settings import load_settings

    s = load_settings("config.example.yaml")
    assert s.semantic.enabled and s.rules


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    from proxy.settings import load_settings

    f = tmp_path / "c.yaml"
    f.write_text("semantic:\n  threshold: 0.91\n  k: 3\n")
    monkeypatch.setenv("STRATACACHE_SEMANTIC__THRESHOLD", "0.97")
    s = load_settings(f)
    assert (s.semantic.threshold, s.semantic.k) == (0.97, 3)


def test_request_id_in_and_out_and_one_access_line_without_prompt(make_proxy, backend_url, caplog):
    with make_proxy(backend_url) as url, caplog.at_level(logging.INFO, logger="stratacache.access"):
        r = httpx.post(url + "/v1/chat/completions", headers={"X-Request-Id": "req-42"},
                       json={"model": "sim", "messages": [{"role": "user", "content": "secret prompt text"}]})
        assert r.headers["x-request-id"] == "req-42"
        assert httpx.post(url + "/v1/chat/completions",
                          json={"model": "sim", "messages": [{"role": "user", "content": "x"}]}
                          ).headers["x-request-id"]
    lines = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "req-42"]
    assert len(lines) == 1 and lines[0].cache == "MISS" and lines[0].status == 200
    assert "secret prompt text" not in caplog.text


def _samples(url: str, name: str) -> list:
    return [s for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text) for s in fam.samples
            if s.name == name]


def test_similarity_histogram_and_near_miss_counter(make_proxy, backend_url, embedder):
    sem = {**SEMANTIC_ON, "threshold": 0.99, "near_miss_band": 0.2}
    with make_proxy(backend_url, embedder=embedder, semantic=sem) as url:
        ask = lambda t: httpx.post(url + "/v1/chat/completions", timeout=60,  # noqa: E731
                                   json={"model": "sim", "messages": [{"role": "user", "content": t}]}).headers
        ask("What is the capital of France?")
        h = ask("What's the capital city of France?")  # ~0.96: under 0.99, inside the band
        assert h["x-cache-status"] == "MISS" and h["x-cache-verdict"] == "below-threshold"
        count = sum(s.value for s in _samples(url, "stratacache_l3_best_similarity_count"))
        assert count >= 1
        assert sum(s.value for s in _samples(url, "stratacache_l3_near_miss_total")) == 1


def test_threshold_rules_per_namespace(make_proxy, backend_url, embedder):
    with make_proxy(backend_url, embedder=embedder, semantic=SEMANTIC_ON,
                    rules=[{"namespace": "strict", "threshold": 0.995}]) as url:
        def ask(text, ns):
            return httpx.post(url + "/v1/chat/completions", timeout=60, headers={"X-Cache-Namespace": ns},
                              json={"model": "sim", "messages": [{"role": "user", "content": text}]}
                              ).headers["x-cache-status"]
        for ns in ("strict", "lenient"):
            ask("What is the capital of France?", ns)
        assert ask("What's the capital city of France?", "lenient") == "HIT"
        assert ask("What's the capital city of France?", "strict") == "MISS"


def test_dependency_latency_histograms_cover_redis_embedder_and_index(make_proxy, backend_url, embedder, redis_url):
    with make_proxy(backend_url, embedder=embedder, semantic=SEMANTIC_ON, redis={"url": redis_url}) as url:
        for t in ("What is the capital of France?", "What's the capital city of France?"):
            httpx.post(url + "/v1/chat/completions", timeout=60,
                       json={"model": "sim", "messages": [{"role": "user", "content": t}]})
        deps = {(s.labels["dependency"], s.labels["op"]) for s in _samples(url, "stratacache_dependency_seconds_count")}
        assert {("redis", "get"), ("embedder", "embed"), ("index", "search")} <= deps


def test_upstream_read_timeout_is_a_504_and_nothing_is_cached(make_proxy):
    from backend.simulated import create_app as sim_app
    from tests.conftest import serving

    with serving(sim_app(ttft_ms=3000, tokens_per_s=1000)) as slow, \
            make_proxy(slow, upstream_http={"read_timeout_s": 0.3}) as url:
        body = {"model": "sim", "messages": [{"role": "user", "content": "too slow"}]}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        # a stream whose headers came back before the stall: an error frame, then [DONE]
        r2 = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
        assert b'"upstream_timeout"' in r2.content and r2.content.rstrip().endswith(b"data: [DONE]")
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).headers["x-cache-status"] == "MISS"
