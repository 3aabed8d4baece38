"""Fixtures for the cache suites that talk to the real redis-server."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

CLIENT_TIMEOUT = 0.5
"""Socket timeouts of the test clients: short, so an outage shows within a test."""


@pytest.fixture
async def clients(redis_url):
    """Factory of separate clients, as separate proxy processes would have; closed at the end."""
    made: list[aioredis.Redis] = []

    def make(url: str = redis_url) -> aioredis.Redis:
        c = aioredis.Redis.from_url(url, socket_timeout=CLIENT_TIMEOUT, socket_connect_timeout=CLIENT_TIMEOUT)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()
