"""Per-request `Cache-Control` directives (pure)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_store: bool = False
    """Neither read nor write."""
    no_cache: bool = False
    """Skip the read, fetch fresh, and refresh the stored entry."""
    max_age: float | None = None
    """Accept only entries younger than this many seconds (no stale serving)."""


NONE = CacheControl()


def parse_cache_control(value: str | None) -> CacheControl:
    """Unknown directives are ignored; a malformed max-age is ignored (RFC 9111 §4.2.1)."""
    if not value:
        return NONE
    no_store = no_cache = False
    max_age: float | None = None
    for raw in value.split(","):
        d = raw.strip().lower()
        if d == "no-store":
            no_store = True
        elif d == "no-cache":
            no_cache = True
        elif d.startswith("max-age="):
            v = d[8:].strip().strip('"')
            if v.isdigit():
                max_age = float(v)
    return CacheControl(no_store=no_store, no_cache=no_cache, max_age=max_age)
