"""The exact-layer protocol shared by L1 (in-process) and L2 (Redis).

Contract (one suite in tests/cache/test_layer_contract.py runs it over every implementation):
- `get` returns the stored `Entry` or `MISS`; it never decides freshness.
- an unavailable backing store raises `LayerError`; it is never reported as a miss.
- `set` stores until `entry.purge_at` (ttl + grace) at the latest; a layer may evict sooner.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from cache.entry import Entry, Key, Miss


class LayerError(RuntimeError):
    """A layer could not answer (connection refused, deadline passed, corrupt data)."""


@runtime_checkable
class Layer(Protocol):
    name: str

    async def get(self, key: Key) -> Entry | Miss: ...

    async def set(self, key: Key, entry: Entry) -> None: ...

    async def delete(self, key: Key) -> bool: ...

    def scan(self, *, partition: str | None = None) -> AsyncIterator[Key]: ...

    async def aclose(self) -> None: ...
