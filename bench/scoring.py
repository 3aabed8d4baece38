"""From records to figures: judged hits, hit rates, latency percentiles, savings.

Judging a hit. The simulated backend's answer is a pure function of the request, so
every answer digest seen coming from the backend (the direct baseline, or a miss
through a cache) is tagged with the groups of the requests that produced it. A hit is
*true* when the served answer was produced for a request of the same group (same
meaning), *false* when it was produced only for other groups, and *unjudged* when the
answer was never seen coming from the backend. This is conservative: a hit that serves
the answer of an unlabelled but equivalent question counts as false.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from bench.driver import Record

MISS_STATUSES = frozenset({"MISS", "BYPASS"})


def answer_groups(records: Iterable[Record]) -> dict[str, set[str]]:
    """answer digest -> groups of the requests the backend produced it for."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.ok and r.answer and (r.target == "direct" or r.cache_status in MISS_STATUSES):
            out[r.answer].add(r.group)
    return dict(out)


def answer_tokens(records: Iterable[Record]) -> dict[str, tuple[int, int]]:
    """answer digest -> (prompt, completion) tokens the backend reported for it; used
    for caches whose hits report no usage (GPTCache answers hits with zeros)."""
    out: dict[str, tuple[int, int]] = {}
    for r in records:
        if r.ok and r.answer and r.completion_tokens and (r.target == "direct" or r.cache_status in MISS_STATUSES):
            out.setdefault(r.answer, (r.prompt_tokens, r.completion_tokens))
    return out


def judge(rec: Record, groups: dict[str, set[str]]) -> str | None:
    """"true", "false" or "unjudged" for a request served without its own backend call;
    None for anything else."""
    if not rec.ok or not rec.offloaded:
        return None
    seen = groups.get(rec.answer)
    if seen is None:
        return "unjudged"
    return "true" if rec.group in seen else "false"


def percentiles(values: Sequence[float]) -> dict:
    """n, mean and p50/p90/p99 in milliseconds (empty: n only)."""
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64) * 1000.0
    return {"n": int(len(a)), "mean_ms": round(float(a.mean()), 3),
            **{f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)}}


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 5) if den else None


def summarize(records: Sequence[Record], groups: dict[str, set[str]], *, nominal_ttft_ms: float,
              nominal_tokens_per_s: float, phase_walls: dict[str, float],
              direct_latency: dict[int, float] | None = None, backend_requests: int | None = None,
              tokens_by_answer: dict[str, tuple[int, int]] | None = None) -> dict:
    """Figures for one target's records. `phase_walls`: wall seconds per phase;
    `direct_latency`: the baseline's latency per step index (for measured savings);
    `backend_requests`: what the backend counted during this target's run, if known."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    measured = [r for r in records if r.measure]
    m_ok = [r for r in measured if r.ok]
    verdicts = {id(r): judge(r, groups) for r in records}

    status = Counter(r.cache_status or "-" for r in m_ok)
    layers = Counter(r.layer for r in m_ok if r.hit and r.layer)
    hits = [r for r in m_ok if r.hit]
    offloaded = [r for r in m_ok if r.offloaded]
    v = Counter(verdicts[id(r)] for r in offloaded)
    same = [r for r in m_ok if r.expect == "same"]
    diff = [r for r in m_ok if r.expect == "different"]
    by_kind: dict[str, dict] = {}
    for r in m_ok:
        k = by_kind.setdefault(r.kind, {"n": 0, "hits": 0, "true_hits": 0, "false_hits": 0})
        k["n"] += 1
        k["hits"] += int(r.offloaded)
        k["true_hits"] += int(verdicts[id(r)] == "true")
        k["false_hits"] += int(verdicts[id(r)] == "false")

    served = [r for r in ok if r.offloaded]
    upstream = [r for r in ok if not r.offloaded]

    def usage(r: Record) -> tuple[int, int]:
        if r.completion_tokens or not tokens_by_answer:
            return r.prompt_tokens, r.completion_tokens
        return tokens_by_answer.get(r.answer, (r.prompt_tokens, r.completion_tokens))

    per_token = 1.0 / nominal_tokens_per_s
    saved_nominal = sum(nominal_ttft_ms / 1000.0 + usage(r)[1] * per_token for r in served)
    saved_measured = None
    if direct_latency is not None:
        saved_measured = sum(direct_latency[r.index] - r.latency_s for r in served if r.index in direct_latency)
    wall = sum(phase_walls.values())

    def lat(rs: Iterable[Record]) -> dict:
        return percentiles([r.latency_s for r in rs])

    def ttft(rs: Iterable[Record]) -> dict:
        return percentiles([r.ttft_s for r in rs if r.stream and r.ttft_s is not None])

    hits_all = [r for r in ok if r.hit]
    misses_all = [r for r in ok if r.cache_status in MISS_STATUSES or (not r.cache_status and r.target == "direct")]
    return {
        "requests": len(records),
        "failed": len(failed),
        "errors": sorted({r.error for r in failed})[:5],
        "measured": {
            "requests": len(measured),
            "hits": len(hits),
            "hit_rate": _rate(len(hits), len(measured)),
            "offloaded": len(offloaded),
            "offload_rate": _rate(len(offloaded), len(measured)),
            "by_status": dict(status),
            "by_layer": dict(layers),
            "true_hits": v["true"], "false_hits": v["false"], "unjudged_hits": v["unjudged"],
            "false_hit_rate": _rate(v["false"], len(m_ok)),
            "precision": _rate(v["true"], v["true"] + v["false"]),
            "expected_same": len(same),
            "true_hits_on_same": sum(verdicts[id(r)] == "true" for r in same),
            "recall_on_same": _rate(sum(verdicts[id(r)] == "true" for r in same), len(same)),
            "expected_different": len(diff),
            "false_hits_on_different": sum(verdicts[id(r)] == "false" for r in diff),
            "false_hit_rate_on_different": _rate(sum(verdicts[id(r)] == "false" for r in diff), len(diff)),
            "by_kind": by_kind,
        },
        "latency": {"all": lat(ok), "hit": lat(hits_all), "miss": lat(misses_all),
                    "coalesced": lat(r for r in ok if r.cache_status == "COALESCED"),
                    "by_layer": {layer: lat(r for r in hits_all if r.layer == layer)
                                 for layer in sorted({r.layer for r in hits_all if r.layer})}},
        "ttft": {"all": ttft(ok), "hit": ttft(hits_all), "miss": ttft(misses_all)},
        "throughput": {"wall_s": round(wall, 3), "rps": round(len(records) / wall, 2) if wall else None,
                       "by_phase_rps": {k: round(sum(1 for r in records if r.phase == k) / w, 2)
                                        for k, w in phase_walls.items() if w > 0}},
        "backend": {
            "requests": backend_requests if backend_requests is not None else len(upstream),
            "requests_counted_by": "backend /stats" if backend_requests is not None else "client",
            "tokens": sum(r.prompt_tokens + r.completion_tokens for r in upstream),
            "tokens_saved": sum(sum(usage(r)) for r in served),
            "completion_tokens_saved": sum(usage(r)[1] for r in served),
            "seconds_saved_nominal": round(saved_nominal, 2),
            "seconds_saved_measured": None if saved_measured is None else round(saved_measured, 2),
        },
    }


def timeline(records: Sequence[Record], window_s: float) -> list[dict]:
    """Per window of start time: requests, hit rate, failures, p50 latency."""
    if not records:
        return []
    end = max(r.t_start for r in records)
    out = []
    for w in range(int(end // window_s) + 1):
        rs = [r for r in records if w * window_s <= r.t_start < (w + 1) * window_s]
        if not rs:
            continue
        ok = [r for r in rs if r.ok]
        out.append({"t_s": round(w * window_s, 2), "requests": len(rs), "failed": len(rs) - len(ok),
                    "hit_rate": _rate(sum(r.hit for r in ok), len(rs)),
                    "p50_ms": percentiles([r.latency_s for r in ok]).get("p50_ms")})
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def comparison(ours: dict, direct: dict, nominal_backend_ms: float | None = None) -> dict:
    """Ratios of a cache target against the direct baseline (and, for hits, against the
    nominal backend's latency for the same answers)."""
    return {
        "hit_p50_over_nominal_backend": ratio(ours["latency"]["hit"].get("p50_ms"), nominal_backend_ms),
        "hit_p50_over_direct_p50": ratio(ours["latency"]["hit"].get("p50_ms"), direct["latency"]["all"].get("p50_ms")),
        "miss_p50_over_direct_p50": ratio(ours["latency"]["miss"].get("p50_ms"), direct["latency"]["all"].get("p50_ms")),
        "miss_overhead_p50_ms": (round(ours["latency"]["miss"]["p50_ms"] - direct["latency"]["all"]["p50_ms"], 3)
                                 if ours["latency"]["miss"].get("n") and direct["latency"]["all"].get("n") else None),
        "mean_latency_speedup": ratio(direct["latency"]["all"].get("mean_ms"), ours["latency"]["all"].get("mean_ms")),
        "hit_ttft_p50_over_direct": ratio(ours["ttft"]["hit"].get("p50_ms"), direct["ttft"]["all"].get("p50_ms")),
        "throughput_ratio": ratio(ours["throughput"]["rps"], direct["throughput"]["rps"]),
        "backend_requests_ratio": ratio(ours["backend"]["requests"], direct["backend"]["requests"]),
    }
