"""TieredCache: commit order and the L3 add that must not hold a response."""
from __future__ import annotations

import asyncio
import time

from cache.bans import BanList
from cache.memory_layer import MemoryLayer
from cache.tiered import LayerEvents, TieredCache
from tests.cache.test_layer_contract import entry


class SlowIndexStage:
    """Stands in for the semantic stage: its add blocks until released (an index rebuild)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.added: list[str] = []

    async def add(self, key, entry, vector):
        await self.release.wait()
        self.added.append(key)


async def test_a_slow_index_add_does_not_hold_the_commit():
    stage = SlowIndexStage()
    cache = TieredCache(l1=MemoryLayer(1 << 20, time.time), l2=None, semantic=stage, bans=BanList(),
                        clock=time.time, events=LayerEvents())
    t0 = time.perf_counter()
    await cache.commit("k", entry(), None)
    assert time.perf_counter() - t0 < 2.0  # bounded by INDEX_WAIT_S, not by the add
    assert cache.l1.get_now("k")  # the exact layer has it at once
    assert stage.added == []
    stage.release.set()
    await cache.aclose()  # waits for the add in flight
    assert stage.added == ["k"]
