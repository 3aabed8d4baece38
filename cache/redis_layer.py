"""L2: the shared exact layer in Redis (`redis.asyncio`, one connection pool).

Each entry is one string key `{prefix}e:{key}` holding `Entry.to_bytes()`, with a Redis
expiry at the entry's purge time (ttl + grace), so Redis drops it when nothing could
serve it. Every call has a deadline; failures raise `LayerError` and feed a circuit
breaker, so an outage costs one fast failure per call instead of a timeout each.
Reads go through a `RedisPipe` when one is given (the hit path: one pipelined
connection instead of a pool checkout per GET), everything else through redis-py.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from cache.breaker import CircuitBreaker
from cache.entry import MISS, CorruptEntry, Entry, Key, Miss
from cache.layer import LayerError
from cache.redis_call import redis_call
from cache.redis_client import Client, scan_keys, used_memory
from cache.redis_pipe import RedisPipe

T = TypeVar("T")


class RedisLayer:
    name = "L2"

    def __init__(self, client: Client, *, prefix: str, timeout_s: float, breaker: CircuitBreaker,
                 clock: Callable[[], float] = time.time,
                 observe: Callable[[str, float], None] | None = None, pipe: RedisPipe | None = None) -> None:
        self.client = client
        self.pipe = pipe
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.clock = clock
        self._observe = observe

    def _k(self, key: Key) -> str:
        return f"{self.prefix}e:{key}"

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        t0 = time.perf_counter()
        out = await redis_call(f"redis {op}", self.breaker, self.timeout_s, fn)
        if self._observe is not None:
            self._observe(op, time.perf_counter() - t0)
        return out

    async def get(self, key: Key) -> Entry | Miss:
        k = self._k(key)
        raw = await self._call("get", (lambda: self.pipe.execute(b"GET", k)) if self.pipe is not None
                               else (lambda: self.client.get(k)))
        if raw is None:
            return MISS
        try:
            return Entry.from_bytes(raw)
        except CorruptEntry as exc:
            raise LayerError(f"redis get: corrupt entry: {exc}") from exc

    async def set(self, key: Key, entry: Entry) -> None:
        ms = int((entry.purge_at - self.clock()) * 1000)
        if ms <= 0:
            return
        data = entry.to_bytes()
        await self._call("set", lambda: self.client.set(self._k(key), data, px=ms))

    async def delete(self, key: Key) -> bool:
        return bool(await self._call("delete", lambda: self.client.delete(self._k(key))))

    async def exists_many(self, keys: list[Key]) -> list[bool]:
        """Which of these keys hold an entry (one pipelined round trip)."""
        async def run():
            async with self.client.pipeline(transaction=False) as p:
                for k in keys:
                    p.exists(self._k(k))
                return await p.execute()
        return [bool(n) for n in await self._call("exists", run)]

    async def scan(self, *, partition: str | None = None) -> AsyncIterator[Key]:
        """Keys of stored entries, on every master of a cluster (a partition filter reads
        each entry: for sweeps only). Each step of the scan has the layer's deadline."""
        plen = len(self.prefix) + 2
        async with contextlib.aclosing(scan_keys(self.client, f"{self.prefix}e:*")) as keys:
            while True:
                try:
                    k = await self._call("scan", keys.__anext__)
                except StopAsyncIteration:
                    return
                key = (k.decode() if isinstance(k, bytes) else k)[plen:]
                if partition is None:
                    yield key
                else:
                    e = await self.get(key)
                    if e and e.meta.partition == partition:
                        yield key

    async def stats(self) -> dict:
        """Entry count (a bounded SCAN: an estimate past 100k) and Redis memory."""
        n = 0
        try:
            async for _ in self.scan():
                n += 1
                if n >= 100_000:
                    break
            used = await self._call("info", lambda: used_memory(self.client))
        except LayerError as exc:
            return {"error": str(exc)}
        return {"entries": n, "bytes": used, "estimate": n >= 100_000}

    async def ping(self) -> bool:
        try:
            await self._call("ping", self.client.ping)
            return True
        except LayerError:
            return False

    async def aclose(self) -> None:
        if self.pipe is not None:
            await self.pipe.aclose()
        await self.client.aclose()
