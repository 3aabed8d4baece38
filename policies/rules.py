"""Operator rules: TTL, grace and L3 thresholds by model, route and namespace (pure).

Rules are tried in order and the first whose every given field matches wins; `model`
and `namespace` are shell-style globs. Fields a rule leaves out fall back to the
defaults, so a rule can set only a threshold, only a TTL, or both.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(default=None, description="glob on the request's model")
    route: Literal["chat", "completion"] | None = None
    namespace: str | None = Field(default=None, description="glob on X-Cache-Namespace")
    ttl_s: float | None = Field(default=None, ge=0)
    grace_s: float | None = Field(default=None, ge=0)
    threshold: float | None = Field(default=None, gt=0, le=1)
    cache: bool | None = Field(default=None, description="false: never cache what matches")

    def matches(self, model: str, route: str, namespace: str) -> bool:
        return ((self.model is None or fnmatchcase(model, self.model))
                and (self.route is None or self.route == route)
                and (self.namespace is None or fnmatchcase(namespace, self.namespace)))


class TTLPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_s: float = Field(default=3600, ge=0)
    grace_s: float = Field(default=300, ge=0)
    max_s: float = Field(default=7 * 24 * 3600, gt=0)

    @model_validator(mode="after")
    def _default_within_max(self) -> "TTLPolicy":
        if self.default_s > self.max_s:
            raise ValueError(f"ttl.default_s ({self.default_s}) exceeds ttl.max_s ({self.max_s})")
        return self


class Resolved(BaseModel):
    model_config = ConfigDict(frozen=True)

    ttl_s: float
    grace_s: float
    threshold: float
    cache: bool


def resolve(rules: tuple[Rule, ...] | list[Rule], ttl: TTLPolicy, default_threshold: float,
            *, model: str, route: str, namespace: str) -> Resolved:
    """First matching rule per field; TTL capped at `ttl.max_s`."""
    ttl_s = grace_s = threshold = cache = None
    for r in rules:
        if not r.matches(model, route, namespace):
            continue
        if ttl_s is None and r.ttl_s is not None:
            ttl_s = r.ttl_s
        if grace_s is None and r.grace_s is not None:
            grace_s = r.grace_s
        if threshold is None and r.threshold is not None:
            threshold = r.threshold
        if cache is None and r.cache is not None:
            cache = r.cache
    return Resolved(
        ttl_s=min(ttl.default_s if ttl_s is None else ttl_s, ttl.max_s),
        grace_s=ttl.grace_s if grace_s is None else grace_s,
        threshold=default_threshold if threshold is None else threshold,
        cache=True if cache is None else cache,
    )
