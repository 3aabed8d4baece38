"""Invalidation across every layer and every replica.

- a ban (tags, model, namespace, tenant, age, request, everything) is added to every
  replica's ban list (checked lazily on each hit), applied at once to each replica's L1,
  and swept eagerly from L2 and the semantic index here;
- a purge by meaning finds the entries whose semantic text is within a similarity of a
  given text, in every partition of the index, and deletes them everywhere.

Counts are exact for what this replica deleted from L2/L1/L3; entries created by a
replica whose writes race the sweep are caught by the lazy check instead.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from cache.ban_bus import BanBus
from cache.bans import BanList, matches
from cache.entry import Key
from cache.layer import LayerError
from cache.tiered import TieredCache
from policies.invalidation import Ban

log = logging.getLogger("stratacache.invalidate")


class Invalidator:
    def __init__(self, *, cache: TieredCache, bans: BanList, bus: BanBus | None, clock: Callable[[], float],
                 sweep_budget_s: float = 10.0) -> None:
        self.cache = cache
        self.bans = bans
        self.bus = bus
        self.clock = clock
        self.sweep_budget_s = sweep_budget_s

    def new_ban(self, **criteria) -> Ban:
        return Ban(id=uuid.uuid4().hex, issued_at=self.clock(), **criteria)

    # -- applied on every replica (this one directly, others through the bus) --------------
    async def apply_ban(self, ban: Ban) -> int:
        self.bans.add(ban)
        gone = [key for key, entry in self.cache.l1.items() if matches(ban, entry)]
        for key in gone:
            await self.cache.l1.delete(key)
        self.cache.mark_refetch(gone)
        return len(gone)

    async def apply_purge(self, keys: list[Key]) -> None:
        self.cache.mark_refetch(keys)
        for k in keys:
            await self.cache.l1.delete(k)
            if self.cache.semantic is not None:
                await self.cache.semantic.index.remove(k)

    # -- operations ----------------------------------------------------------------------
    async def ban(self, ban: Ban) -> int:
        local = await self.apply_ban(ban)
        if self.bus is not None:
            try:
                await self.bus.publish_ban(ban)
            except LayerError as exc:
                self.cache.events.layer_error("redis", "ban", exc)
        swept = await self.sweep([ban])
        if swept and self.bus is not None:
            try:  # every replica marks what left L2 for a fresh fetch
                await self.bus.publish_purge(swept)
            except LayerError as exc:
                self.cache.events.layer_error("redis", "purge", exc)
        return max(local, len(swept))

    async def purge(self, keys: list[Key]) -> int:
        n = 0
        self.cache.mark_refetch(keys)
        for k in keys:
            n += bool(await self.cache.delete(k))
        if self.bus is not None:
            try:
                await self.bus.publish_purge(keys)
            except LayerError as exc:
                self.cache.events.layer_error("redis", "purge", exc)
        return n

    async def purge_similar(self, text: str, min_similarity: float, tenant: str | None = None) -> int:
        sem = self.cache.semantic
        if sem is None:
            return 0
        vec = await sem.embed_one(text)
        found = await asyncio.to_thread(sem.index.search_all_partitions, vec, min_similarity)
        keys = []
        for key, _partition, _score in found:
            if tenant is not None:
                try:
                    e = await self.cache.get_entry(key)
                except LayerError:
                    continue  # cannot tell whose it is: leave it
                if not e or e.meta.tenant != tenant:
                    continue
            keys.append(key)
        return await self.purge(keys)

    async def sweep(self, bans: list[Ban] | None = None) -> list[Key]:
        """Delete from L2 (and the index) every entry a ban matches, within a time budget;
        returns the keys deleted."""
        bans = list(self.bans) if bans is None else bans
        l2 = self.cache.l2
        if not bans or l2 is None:
            return []
        deadline = time.monotonic() + self.sweep_budget_s
        n: list[Key] = []
        try:
            async for key in l2.scan():
                if time.monotonic() > deadline:
                    log.warning("ban sweep ran out of time; the lazy check covers the rest")
                    break
                try:
                    e = await l2.get(key)
                except LayerError:
                    continue
                if e and any(matches(b, e) for b in bans):
                    await self.cache.delete(key)
                    n.append(key)
        except LayerError as exc:
            self.cache.events.layer_error("redis", "sweep", exc)
        return n

    async def run_sweeper(self, stop: asyncio.Event, every_s: float, max_lifetime_s: float) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every_s)
                return
            except TimeoutError:
                pass
            self.bans.prune(self.clock(), max_lifetime_s)
            if self.cache.semantic is not None:
                gone = await self.cache.semantic.sweep_orphans(self.cache)
                if gone:
                    log.info("removed vectors of expired entries", extra={"vectors": gone})
            if len(self.bans):
                await self.sweep()
                if self.bus is not None:
                    try:
                        await self.bus.prune(self.clock())
                    except Exception as exc:  # noqa: BLE001 - next round retries
                        log.warning("ban prune failed", extra={"error": str(exc)})
