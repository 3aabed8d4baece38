"""L1: the in-process exact layer on `cachetools.TLRUCache`.

Bounded in bytes (each entry weighs `Entry.size`), least-recently-used eviction, and
each entry leaves at its own `purge_at` (ttl + grace) on the injected clock. The
freshness decision itself belongs to `policies.freshness`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from cachetools import TLRUCache

from cache.entry import MISS, Entry, Key, Miss


def _ttu(_key: Key, entry: Entry, _now: float) -> float:
    return entry.purge_at


def _size(entry: Entry) -> int:
    return entry.size


class MemoryLayer:
    name = "L1"

    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        self._cache: TLRUCache = TLRUCache(maxsize=max_bytes, ttu=_ttu, timer=clock, getsizeof=_size)

    async def get(self, key: Key) -> Entry | Miss:
        return self._cache.get(key, MISS)

    def get_now(self, key: Key) -> Entry | Miss:
        """Synchronous read for the hit fast path (no await needed for a dict lookup)."""
        return self._cache.get(key, MISS)

    async def set(self, key: Key, entry: Entry) -> None:
        if entry.size > self._cache.maxsize:
            return  # larger than the whole layer: cachetools would raise
        self._cache[key] = entry

    async def delete(self, key: Key) -> bool:
        return self._cache.pop(key, MISS) is not MISS

    async def scan(self, *, partition: str | None = None) -> AsyncIterator[Key]:
        for key, entry in list(self._cache.items()):
            if partition is None or entry.meta.partition == partition:
                yield key

    def items(self) -> list[tuple[Key, Entry]]:
        return list(self._cache.items())

    @property
    def bytes(self) -> int:
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)

    async def aclose(self) -> None:
        self._cache.clear()
