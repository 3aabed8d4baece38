"""`decide`: what the cache may do with one request (pure).

Inputs are the parsed body and header values; output says whether to read, write and
match semantically, with which keys, TTL, grace and threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from policies.cache_control import CacheControl
from policies.cacheability import CacheabilityPolicy, bypass_reason, semantic_allowed
from policies.keys import RequestKeys, request_keys
from policies.rules import Resolved


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    tenant: str
    namespace: str
    model: str
    keys: RequestKeys
    read: bool
    write: bool
    semantic: bool
    bypass: str | None
    ttl_s: float
    grace_s: float
    threshold: float
    max_age: float | None
    tags: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse_tags(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(sorted({t.strip() for t in value.split(",") if t.strip()}))


def decide(*, route: str, body: dict, tenant: str, namespace: str, cc: CacheControl, tags: tuple[str, ...],
           resolved: Resolved, cacheability: CacheabilityPolicy, semantic_enabled: bool,
           max_semantic_chars: int) -> Decision:
    """`max_semantic_chars`: a longer last user turn has no semantic form (L3 neither reads
    nor stores it): the embedding sees only its first few hundred tokens, and checking a
    candidate against it costs event-loop time in proportion to its length."""
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    keys = request_keys(tenant=tenant, namespace=namespace, route=route, body=body)
    if keys.semantic_text is not None and len(keys.semantic_text) > max_semantic_chars:
        keys = replace(keys, semantic_text=None)
    bypass = "no-store" if cc.no_store else bypass_reason(body, cacheability)
    if bypass is None and not resolved.cache:
        bypass = "rule"
    read = bypass is None and not cc.no_cache
    write = bypass is None
    so = body.get("stream_options")
    return Decision(
        route=route, tenant=tenant, namespace=namespace, model=model, keys=keys,
        read=read, write=write,
        semantic=read and semantic_enabled and keys.semantic_text is not None and semantic_allowed(body, cacheability),
        bypass=bypass, ttl_s=resolved.ttl_s, grace_s=resolved.grace_s, threshold=resolved.threshold,
        max_age=cc.max_age, tags=tags, stream=body.get("stream") is True,
        include_usage=isinstance(so, dict) and so.get("include_usage") is True,
    )
