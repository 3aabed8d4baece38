"""Prometheus metrics, in a registry owned by one app instance (no global registry)."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cache.tiered import LayerEvents

log = logging.getLogger("stratacache.metrics")

_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIM = tuple(round(0.5 + i * 0.025, 3) for i in range(21))
_THR = tuple(round(0.8 + i * 0.01, 2) for i in range(21))


class Metrics(LayerEvents):
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("stratacache_requests_total", "Requests by route, HTTP status, cache status and layer",
                                ["route", "status", "cache", "layer"], registry=r)
        self.latency = Histogram("stratacache_request_seconds", "Time to the full response, by cache outcome",
                                 ["cache"], buckets=_LAT, registry=r)
        self.ttfb = Histogram("stratacache_time_to_first_byte_seconds", "Time to the first body byte, by cache outcome",
                              ["cache"], buckets=_LAT, registry=r)
        self.hits = Counter("stratacache_hits_total", "Hits by layer", ["layer"], registry=r)
        self.misses = Counter("stratacache_misses_total", "Lookups that found nothing servable", registry=r)
        self.similarity = Histogram("stratacache_l3_best_similarity",
                                    "Cosine similarity of the best L3 candidate, hits and misses alike",
                                    ["outcome"], buckets=_SIM, registry=r)
        self.near_miss = Counter("stratacache_l3_near_miss_total",
                                 "L3 misses whose best candidate was just under the threshold", registry=r)
        self.verdicts = Counter("stratacache_l3_verdicts_total", "Verification verdicts on L3 candidates",
                                ["verdict"], registry=r)
        self.layer_errors = Counter("stratacache_dependency_errors_total",
                                    "Failed or timed-out calls to Redis, the embedder or the index",
                                    ["dependency", "op"], registry=r)
        self.dep_latency = Histogram("stratacache_dependency_seconds", "Latency of Redis, embedder and index calls",
                                     ["dependency", "op"], buckets=_LAT, registry=r)
        self.tokens_saved = Counter("stratacache_backend_tokens_saved_total",
                                    "Completion tokens served from cache instead of generated", registry=r)
        self.banned = Counter("stratacache_banned_hits_total", "Entries refused on hit by a ban", ["layer"], registry=r)
        self.healed = Counter("stratacache_index_healed_total",
                              "Entries read from L2 that the semantic index lacked, indexed then", registry=r)
        self.upstream_errors = Counter("stratacache_upstream_errors_total", "Upstream failures", ["kind"], registry=r)
        self.coalesced = Counter("stratacache_coalesced_total", "Requests that joined an in-flight identical request",
                                 registry=r)
        self.rejected = Counter("stratacache_rejected_total", "Requests refused by limits", ["reason"], registry=r)
        self.inflight = Gauge("stratacache_inflight_upstream", "Upstream requests in flight", registry=r)
        # calibration and the off-path judge
        self.thresholds = Histogram("stratacache_l3_threshold",
                                    "Threshold applied to the best verified L3 candidate, by rule "
                                    "(static, global: calibration without evidence, calibrated) and outcome",
                                    ["rule", "outcome"], buckets=_THR, registry=r)
        self.evidence = Counter("stratacache_l3_evidence_total", "Calibration observations recorded",
                                ["source", "outcome"], registry=r)
        self.judgements = Counter("stratacache_judge_total",
                                  "Off-path judgements of grey-zone pairs by outcome "
                                  "(yes, no, unclear, error, dropped)", ["outcome"], registry=r)
        self.aliases = Counter("stratacache_judge_aliases_total",
                               "Approved pairs whose new request now serves the cached answer", registry=r)

        self._req_children: dict[tuple, tuple] = {}
        self._hit_children: dict[str, object] = {}

    def record_request(self, route: str, code: int, cache: str, layer: str, seconds: float, streaming: bool) -> None:
        """Labelled children are cached: `.labels()` costs more than the increment itself."""
        k = (route, code, cache, layer)
        ch = self._req_children.get(k)
        if ch is None:
            ch = self._req_children[k] = (self.requests.labels(route, str(code), cache, layer),
                                          self.latency.labels(cache), self.ttfb.labels(cache))
        ch[0].inc()
        if not streaming:
            ch[1].observe(seconds)
            ch[2].observe(seconds)

    def hits_by_layer(self, layer: str) -> None:
        ch = self._hit_children.get(layer)
        if ch is None:
            ch = self._hit_children[layer] = self.hits.labels(layer)
        ch.inc()

    # LayerEvents
    def layer_error(self, layer: str, op: str, exc: BaseException) -> None:
        self.layer_errors.labels(layer, op).inc()
        log.warning("dependency failed, serving as a miss", extra={"dependency": layer, "op": op,
                                                                   "error": f"{type(exc).__name__}: {exc}"})

    def evidence_recorded(self, source: str, correct: bool) -> None:
        self.evidence.labels(source, "correct" if correct else "wrong").inc()

    def layer_latency(self, layer: str, op: str, seconds: float) -> None:
        self.dep_latency.labels(layer, op).observe(seconds)

    def banned_hit(self, layer: str) -> None:
        self.banned.labels(layer).inc()

    def index_healed(self) -> None:
        self.healed.inc()

    def count_hits(self) -> dict[str, int]:
        return {s.labels["layer"]: int(s.value) for m in self.hits.collect() for s in m.samples
                if s.name.endswith("_total")}

    def count_misses(self) -> int:
        return int(sum(s.value for m in self.misses.collect() for s in m.samples if s.name.endswith("_total")))

    def render(self) -> bytes:
        return generate_latest(self.registry)
