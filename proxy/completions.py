"""The cached routes: POST /v1/chat/completions and /v1/completions.

HTTP in, a `Decision` from policies, a lookup through the tiered cache, and either a
replayed entry or a (possibly coalesced) upstream call out. No caching logic lives here.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from cache.flight import Flight
from cache.redis_lock import Claim
from cache.tiered import Hit, Lookup, NO_PROBE
from policies.cache_control import parse_cache_control
from policies.decision import Decision, decide, parse_tags
from policies.freshness import age_seconds
from proxy.errors import error_frames, error_response
from proxy.protocol import InvalidRequest, validate
from proxy.pump import FetchJob, upstream_payload
from proxy.replay import entry_response, sse_bytes
from proxy.services import Services

log = logging.getLogger("stratacache.access")

PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_NS_MAX = 128


def _namespace(value: str | None) -> str:
    if value is None:
        return ""
    v = value.strip()
    if len(v) > _NS_MAX or not v.isprintable():
        raise InvalidRequest(f"X-Cache-Namespace must be at most {_NS_MAX} printable characters", "X-Cache-Namespace")
    return v


async def handle(request: Request, route: str, svc: Services) -> Response:
    t0 = time.perf_counter()
    rid = request.headers.get("x-request-id") or os.urandom(12).hex()
    status_label, layer = "ERROR", ""
    resp: Response | None = None
    d: Decision | None = None
    code = 500  # unless a response is made, or the client left first (499, nginx's code for it)
    try:
        resp, status_label, layer, d = await _handle(request, route, svc, rid)
        return resp
    except (ClientDisconnect, asyncio.CancelledError):
        code = 499
        raise
    finally:
        dt = time.perf_counter() - t0
        code = resp.status_code if resp is not None else code
        # Recorded once the response is on its way: the handler's task yields to the loop
        # when it sends, and the loop runs this before it reads the next request.
        asyncio.get_running_loop().call_soon(_record, svc, route, rid, code, status_label, layer, dt, d,
                                             isinstance(resp, StreamingResponse))


def _record(svc: Services, route: str, rid: str, code: int, status_label: str, layer: str, dt: float,
            d: Decision | None, streamed: bool) -> None:
    """The request's metrics and access-log line."""
    svc.metrics.record_request(route, code, status_label, layer, dt, streamed)
    if svc.access_log:
        rec = {"request_id": rid, "route": route, "status": code, "cache": status_label, "layer": layer,
               "ms": round(dt * 1000, 3)}
        if d is not None:
            rec["tenant"] = d.tenant
            rec["model"] = d.model
            if svc.settings.log_prompts and d.keys.semantic_text is not None:
                rec["prompt"] = d.keys.semantic_text
        log.info("request", extra=rec)


class Refused(Exception):
    """A request refused before any cache work: carries its error response."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _decision(request: Request, route: str, raw: bytes, svc: Services, base_headers: dict[str, str]) -> Decision:
    """Validate and decide. Raises Refused with a 4xx in the OpenAI shape."""
    limits = svc.settings.limits
    hdrs = request.headers
    try:
        body = orjson.loads(raw)
        validate(route, body)
        namespace = _namespace(hdrs.get("x-cache-namespace"))
    except orjson.JSONDecodeError as exc:
        raise Refused(error_response(400, f"invalid JSON body: {exc}", headers=base_headers)) from None
    except InvalidRequest as exc:
        raise Refused(error_response(400, str(exc), param=exc.param, headers=base_headers)) from None
    ceiling = limits.max_tokens_ceiling
    if ceiling is not None:
        for f in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(f), int) and body[f] > ceiling:
                svc.metrics.rejected.labels("max_tokens").inc()
                raise Refused(error_response(400, f"{f} exceeds this proxy's ceiling of {ceiling}", param=f,
                                             code="max_tokens_exceeded", headers=base_headers))
    return decide(route=route, body=body, tenant=svc.tenant_of(hdrs), namespace=namespace,
                  cc=parse_cache_control(hdrs.get("cache-control")), tags=parse_tags(hdrs.get("x-cache-tags")),
                  resolved=svc.resolve(body.get("model", ""), route, namespace),
                  cacheability=svc.settings.cacheability, semantic_enabled=svc.cache.semantic is not None,
                  max_semantic_chars=svc.settings.semantic.max_text_chars)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is known to exceed `limit` bytes: from its
    Content-Length, or while reading it, so an oversized body is never held in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _handle(request: Request, route: str, svc: Services, rid: str) -> tuple[Response, str, str, Decision | None]:
    base_headers = {"x-request-id": rid}
    limit = svc.settings.limits.max_body_bytes
    raw = await _read_body(request, limit)
    if raw is None:
        svc.metrics.rejected.labels("body_size").inc()
        return error_response(413, f"request body exceeds {limit} bytes", code="request_too_large",
                              headers=base_headers), "BYPASS", "", None
    # The same bytes with the same cache headers and credentials always yield the same
    # decision, so a repeat skips parsing, validation and key derivation; an L1 hit then
    # costs a dict lookup.
    memo_key = svc.decision_memo_key(route, raw, request.headers)
    d = svc.decisions.get(memo_key) if memo_key is not None else None
    if d is None:
        try:
            d = _decision(request, route, raw, svc, base_headers)
        except Refused as r:
            return r.response, "BYPASS", "", None
        if memo_key is not None:
            svc.remember_decision(memo_key, d)
    elif d.read:
        hit = svc.cache.l1_hit(d.keys.key, d.max_age)
        if hit is not None and not hit.stale:
            svc.metrics.hits_by_layer("L1")
            svc.metrics.tokens_saved.inc(hit.entry.meta.completion_tokens)
            return entry_response(hit.entry, stream=d.stream, include_usage=d.include_usage,
                                  headers=_hit_headers(hit, svc, base_headers)), "HIT", "L1", d

    # A miss that reaches the semantic stage asks for the cross-replica lock there, so its
    # round trip overlaps the embedding; whatever this request does not lead gives it back.
    claim = svc.claim(d)
    try:
        return await _lookup_or_fetch(request, route, raw, d, svc, base_headers, claim)
    finally:
        if claim is not None:
            claim.leave()


async def _lookup_or_fetch(request: Request, route: str, raw: bytes, d: Decision, svc: Services,
                           base_headers: dict[str, str], claim: Claim | None) -> tuple[Response, str, str, Decision]:
    look = Lookup(None, NO_PROBE)
    if d.read:
        look = await svc.cache.lookup(key=d.keys.key, max_age=d.max_age,
                                      semantic_text=d.keys.semantic_text if d.semantic else None,
                                      partition=d.keys.partition, threshold=d.threshold,
                                      on_exact_miss=claim.ask if claim is not None else None)
        svc.observe_probe(look, d)
        if look.hit is not None:
            return _hit_response(look.hit, d, svc, request, raw, base_headers), \
                ("STALE" if look.hit.stale else "HIT"), look.hit.layer, d
        svc.metrics.misses.inc()

    tenant = d.tenant
    if not svc.admit(tenant):
        svc.metrics.rejected.labels("tenant_concurrency").inc()
        return (error_response(429, "too many concurrent requests for this API key", "rate_limit_exceeded",
                               code="rate_limit_exceeded", headers={**base_headers, "retry-after": "1"}),
                "BYPASS", "", d)
    try:
        resp, status = await _fetch(request, route, raw, orjson.loads(raw), d, look, svc, base_headers, claim)
    except BaseException:
        svc.release(tenant)
        raise
    if isinstance(resp, StreamingResponse):
        _release_after_stream(resp, svc, tenant)
    else:
        svc.release(tenant)
    return resp, status, "", d


def _release_after_stream(resp: StreamingResponse, svc: Services, tenant: str) -> None:
    inner = resp.body_iterator

    async def wrapped():
        try:
            async for chunk in inner:
                yield chunk
        finally:
            svc.release(tenant)

    resp.body_iterator = wrapped()


def _hit_headers(hit: Hit, svc: Services, base: dict[str, str]) -> dict[str, str]:
    h = {**base, "x-cache-status": "STALE" if hit.stale else "HIT", "x-cache-layer": hit.layer,
         "age": str(age_seconds(hit.entry.created_at, svc.clock()))}
    if hit.similarity is not None:
        h["x-cache-similarity"] = f"{hit.similarity:.4f}"
        h["x-cache-verdict"] = hit.verdict or "ok"
    if hit.threshold is not None:
        h["x-cache-threshold"] = f"{hit.threshold:.4f}"
    return h


def _hit_response(hit: Hit, d: Decision, svc: Services, request: Request, raw: bytes,
                  base: dict[str, str]) -> Response:
    svc.metrics.hits_by_layer(hit.layer)
    svc.metrics.tokens_saved.inc(hit.entry.meta.completion_tokens)
    if hit.stale:
        svc.refresh_in_background(d, FetchJob(PATHS[d.route], upstream_payload(orjson.loads(raw), raw, d.stream),
                                              request.headers, d, None))
    return entry_response(hit.entry, stream=d.stream, include_usage=d.include_usage,
                          headers=_hit_headers(hit, svc, base))


async def _fetch(request: Request, route: str, raw: bytes, body: dict, d: Decision, look: Lookup, svc: Services,
                 base: dict[str, str], claim: Claim | None) -> tuple[Response, str]:
    flight, leader = svc.join_flight(d, FetchJob(PATHS[route], upstream_payload(body, raw, d.stream),
                                                 request.headers, d, look.probe.vector, claim))
    status = "BYPASS" if d.bypass else ("MISS" if leader else "COALESCED")
    headers = {**base, "x-cache-status": status}
    if look.probe.verdict and look.probe.verdict != "ok":
        headers["x-cache-verdict"] = look.probe.verdict
    if look.probe.best_similarity is not None:
        headers["x-cache-similarity"] = f"{look.probe.best_similarity:.4f}"  # the best candidate's, not served
    if look.probe.threshold is not None:
        headers["x-cache-threshold"] = f"{look.probe.threshold:.4f}"
    if not leader:
        svc.metrics.coalesced.inc()
    try:
        up = await flight.upstart
    except BaseException:
        flight.unsubscribe()
        raise
    if d.stream and up.streaming and up.status == 200:
        if up.via_peer:
            status = headers["x-cache-status"] = "COALESCED"
        return StreamingResponse(_follow(flight, d.include_usage), status_code=200,
                                 headers={**up.headers, **headers, "cache-control": "no-cache"},
                                 media_type="text/event-stream"), status
    try:
        outcome = await flight.wait()
    finally:
        flight.unsubscribe()
    if outcome.via_peer:
        status = headers["x-cache-status"] = "COALESCED"
    if outcome.entry is not None:
        if d.stream:
            return Response(sse_bytes(outcome.entry, d.include_usage), media_type="text/event-stream",
                            headers=headers), status
        return Response(outcome.entry.body, media_type="application/json", headers=headers), status
    return Response(outcome.body, status_code=outcome.status, media_type="application/json", headers=headers), status


async def _follow(flight: Flight, include_usage: bool):
    """One subscriber's view of a streaming flight: every event as it arrives."""
    try:
        async for ev, kind in flight.follow():
            if kind == "usage" and not include_usage:
                continue
            yield ev
        o = flight.outcome
        if o is not None and o.error is not None:
            yield error_frames(o.error)
    finally:
        flight.unsubscribe()
