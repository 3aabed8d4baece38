"""One guarded Redis call: circuit breaker, deadline, and errors translated to LayerError."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cache.breaker import CircuitBreaker, CircuitOpen
from cache.layer import LayerError
from cache.redis_client import REDIS_ERRORS

T = TypeVar("T")


async def redis_call(what: str, breaker: CircuitBreaker, timeout_s: float, fn: Callable[[], Awaitable[T]]) -> T:
    """Run `fn` unless the breaker is open, within `timeout_s`; a Redis, socket or deadline
    failure opens the breaker further and raises LayerError naming `what`."""
    try:
        breaker.check()
    except CircuitOpen as exc:
        raise LayerError(f"{what}: circuit open") from exc
    try:
        async with asyncio.timeout(timeout_s):
            out = await fn()
    except REDIS_ERRORS as exc:
        breaker.failure()
        raise LayerError(f"{what}: {type(exc).__name__}: {exc}") from exc
    breaker.success()
    return out
