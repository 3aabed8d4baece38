"""Cross-replica single flight: a Redis lock with an expiry (SET NX PX), so a dead
leader frees it by itself. Release deletes only our own token (compare-and-delete).
With a `RedisPipe` the lock is taken on the request path's pipelined connection."""
from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache.entry import Key
from cache.layer import LayerError
from cache.redis_pipe import RedisPipe

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLock:
    def __init__(self, client: aioredis.Redis, *, prefix: str, timeout_s: float, pipe: RedisPipe | None = None) -> None:
        self.client = client
        self.pipe = pipe
        self.prefix = prefix
        self.timeout_s = timeout_s

    def _k(self, key: Key) -> str:
        return f"{self.prefix}lock:{key}"

    async def acquire(self, key: Key, ttl_s: float) -> str | None:
        """Our token when we lead, None when another replica does. Raises LayerError."""
        token = uuid.uuid4().hex
        try:
            async with asyncio.timeout(self.timeout_s):
                px = max(1, int(ttl_s * 1000))
                if self.pipe is not None:
                    ok = await self.pipe.execute(b"SET", self._k(key), token, b"NX", b"PX", px)
                else:
                    ok = await self.client.set(self._k(key), token, nx=True, px=px)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LayerError(f"redis lock: {type(exc).__name__}: {exc}") from exc
        return token if ok else None

    async def release(self, key: Key, token: str) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.pipe is not None:
                    await self.pipe.execute(b"EVAL", _RELEASE, 1, self._k(key), token)
                else:
                    await self.client.eval(_RELEASE, 1, self._k(key), token)
        except (RedisError, OSError, TimeoutError):
            pass  # the lock expires by itself
