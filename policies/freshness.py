"""Freshness of an entry at a given time (pure; the clock is the caller's).

fresh   -- age < ttl (and within the request's max-age, if any): serve
grace   -- ttl <= age < ttl + grace: serve stale once a refresh is started
expired -- otherwise: a miss
"""
from __future__ import annotations

import enum


class Freshness(enum.Enum):
    FRESH = "fresh"
    GRACE = "grace"
    EXPIRED = "expired"


def freshness(created_at: float, ttl: float, grace: float, now: float,
              max_age: float | None = None) -> Freshness:
    """All arguments in seconds on the same clock."""
    age = now - created_at
    if max_age is not None and age > max_age:
        return Freshness.EXPIRED  # the client asked for younger; stale is not younger
    if age < ttl:
        return Freshness.FRESH
    if max_age is None and age < ttl + grace:
        return Freshness.GRACE
    return Freshness.EXPIRED


def age_seconds(created_at: float, now: float) -> int:
    """The `Age` header value."""
    return max(0, int(now - created_at))
