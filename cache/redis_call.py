"""Guarded Redis calls: a deadline and errors translated to LayerError, and optionally a circuit breaker."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cache.breaker import CircuitBreaker, CircuitOpen
from cache.layer import LayerError
from cache.redis_client import REDIS_ERRORS

T = TypeVar("T")


async def bounded_call(what: str, timeout_s: float, fn: Callable[[], Awaitable[T]]) -> T:
    """Run `fn` within `timeout_s`; a Redis, socket or deadline failure raises LayerError naming `what`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await fn()
    except REDIS_ERRORS as exc:
        raise LayerError(f"{what}: {type(exc).__name__}: {exc}") from exc


async def redis_call(what: str, breaker: CircuitBreaker, timeout_s: float, fn: Callable[[], Awaitable[T]]) -> T:
    """`bounded_call` unless the breaker is open; a failure opens the breaker further."""
    try:
        breaker.check()
    except CircuitOpen as exc:
        raise LayerError(f"{what}: circuit open") from exc
    try:
        out = await bounded_call(what, timeout_s, fn)
    except LayerError:
        breaker.failure()
        raise
    breaker.success()
    return out
