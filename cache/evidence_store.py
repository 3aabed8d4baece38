"""Calibration evidence per cached entry: the `policies.calibration.Evidence` of each key.

Contract (`EvidenceStore`):
- `get_many(keys)` returns every asked key's evidence, empty `Evidence()` for a key with
  none; `add` appends one observation and returns the new evidence; `delete` forgets a key.
- an unavailable backing store raises `LayerError` (never an empty answer in disguise):
  the caller decides without evidence (the global threshold) and counts the failure.
- evidence is bounded per key (`Evidence.capacity` observations, the oldest drop first)
  and in number of keys (`max_keys`; past it, keys are dropped at random).

Two implementations: `MemoryEvidenceStore` (one process, no Redis: an LRU of evidence) and
`RedisEvidenceStore`: one hash `{prefix}ev`, field = entry key, value = the JSON of
`Evidence.to_dict()`, shared by every replica. A lookup reads through a small in-process
cache (bounded, entries kept `cache_ttl_s`), so a hot neighbourhood costs no round trip
per request; another replica's observations show up here within `cache_ttl_s`. An `add`
is a read, an append and a compare-and-set (a tiny Lua script), retried a few times, so
concurrent appends from several replicas are not lost. Every Redis call has a deadline
and feeds a circuit breaker, like L2.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar, runtime_checkable

import orjson
from cachetools import LRUCache, TTLCache

from cache.breaker import CircuitBreaker
from cache.entry import Key
from cache.layer import LayerError
from cache.redis_client import Client
from cache.redis_call import redis_call
from policies.calibration import Evidence

T = TypeVar("T")

_CAS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


@runtime_checkable
class EvidenceStore(Protocol):
    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Evidence]: ...

    async def add(self, key: Key, similarity: float, correct: bool, weight: float = 1.0) -> Evidence: ...

    async def delete(self, key: Key) -> None: ...

    async def aclose(self) -> None: ...


class MemoryEvidenceStore:
    """Evidence in this process only (a proxy without Redis), least recently used dropped first."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._data: LRUCache = LRUCache(maxsize=max_keys)

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Evidence]:
        return {k: self._data.get(k) or Evidence() for k in keys}

    async def add(self, key: Key, similarity: float, correct: bool, weight: float = 1.0) -> Evidence:
        ev = (self._data.get(key) or Evidence()).add(similarity, correct, weight)
        self._data[key] = ev
        return ev

    async def delete(self, key: Key) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    async def aclose(self) -> None:
        self._data.clear()


class RedisEvidenceStore:
    """Evidence in the Redis hash `{prefix}ev`, read through a small local cache."""

    def __init__(self, client: Client, *, prefix: str, timeout_s: float, breaker: CircuitBreaker,
                 cache_entries: int = 10_000, cache_ttl_s: float = 30.0, max_keys: int = 200_000,
                 cas_retries: int = 3, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.hash_key = f"{prefix}ev"
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.max_keys = max_keys
        self.cas_retries = cas_retries
        self._local: TTLCache = TTLCache(maxsize=cache_entries, ttl=cache_ttl_s, timer=clock)
        self._cas = client.register_script(_CAS)
        self._adds = 0

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await redis_call(f"evidence {op}", self.breaker, self.timeout_s, fn)

    @staticmethod
    def _decode(raw: bytes | str | None) -> Evidence:
        if raw is None:
            return Evidence()
        try:
            data = orjson.loads(raw)
            return Evidence.from_dict(data if isinstance(data, dict) else None)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return Evidence()  # unreadable evidence is no evidence: the global threshold applies

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Evidence]:
        out: dict[Key, Evidence] = {}
        todo: list[Key] = []
        for k in keys:
            ev = self._local.get(k)
            if ev is None:
                todo.append(k)
            else:
                out[k] = ev
        if todo:
            raws = await self._call("get", lambda: self.client.hmget(self.hash_key, todo))
            for k, raw in zip(todo, raws):
                out[k] = self._local[k] = self._decode(raw)  # empty evidence is cached too
        return out

    async def add(self, key: Key, similarity: float, correct: bool, weight: float = 1.0) -> Evidence:
        for _ in range(self.cas_retries):
            raw = await self._call("get", lambda: self.client.hget(self.hash_key, key))
            ev = self._decode(raw).add(similarity, correct, weight)
            new = orjson.dumps(ev.to_dict())
            old = raw if raw is not None else b""
            done = await self._call("add", lambda: self._cas(keys=[self.hash_key], args=[key, old, new]))
            if done:
                self._local[key] = ev
                await self._bound()
                return ev
        raise LayerError("evidence add: concurrent writers kept winning")

    async def _bound(self) -> None:
        """Every 64 adds, drop random keys past `max_keys` (cheap, approximate, bounded)."""
        self._adds += 1
        if self._adds % 64:
            return
        n = await self._call("len", lambda: self.client.hlen(self.hash_key))
        excess = int(n) - self.max_keys
        if excess > 0:
            victims = await self._call("trim", lambda: self.client.hrandfield(self.hash_key, min(excess, 1000)))
            if victims:
                await self._call("trim", lambda: self.client.hdel(self.hash_key, *victims))

    async def delete(self, key: Key) -> None:
        self._local.pop(key, None)
        await self._call("delete", lambda: self.client.hdel(self.hash_key, key))

    def forget_local(self) -> None:
        """Drop the local read-through copies (the next reads go to Redis)."""
        self._local.clear()

    async def aclose(self) -> None:
        self._local.clear()  # the client belongs to whoever made it
