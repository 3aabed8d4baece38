"""Tiered lookup: L1 -> L2 -> L3, and the commit of a completed answer to every layer.

Fail open: a layer that raises `LayerError` (or an embedder/index that fails or passes
its deadline) is a miss for this request, logged and counted through `events`; it never
fails the request.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cachetools import TTLCache

from cache.bans import BanList
from cache.entry import Entry, Key, Miss
from cache.layer import Layer, LayerError
from cache.memory_layer import MemoryLayer
from policies.freshness import Freshness, freshness

log = logging.getLogger("stratacache.cache")


@dataclass(frozen=True, slots=True)
class Hit:
    entry: Entry
    layer: str  # "L1" | "L2" | "L3"
    key: Key
    stale: bool = False
    similarity: float | None = None
    verdict: str | None = None
    threshold: float | None = None
    """L3: the threshold applied (the static one, or the entry's calibrated one)."""
    rule: str | None = None
    """L3: "static" (semantic.threshold or a rule), "global" (calibration, no evidence) or "calibrated"."""


@dataclass(frozen=True, slots=True)
class GreyCandidate:
    """A verified candidate that was not served: the pair (query, cached) to learn from."""

    key: Key
    similarity: float
    cached_text: str
    query_text: str
    threshold: float


@dataclass(frozen=True, slots=True)
class SemanticProbe:
    """What the semantic stage learnt on a miss: the query vector (reused at commit, so
    a text is never embedded twice in one request), the best candidate's similarity, the
    verdict on it, the threshold applied to the best verified candidate, and the
    grey-zone candidate the proxy learns from after answering."""

    vector: np.ndarray | None = None
    best_similarity: float | None = None
    verdict: str | None = None
    threshold: float | None = None
    rule: str | None = None
    grey: GreyCandidate | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    hit: Hit | None
    probe: SemanticProbe


NO_PROBE = SemanticProbe()


def _consume(fut: "asyncio.Future") -> None:
    """Retrieve a cancelled or failed background result so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


class LayerEvents:
    """Counters the tiered cache reports to (metrics live in the proxy)."""

    def layer_error(self, layer: str, op: str, exc: BaseException) -> None: ...

    def layer_latency(self, layer: str, op: str, seconds: float) -> None: ...

    def banned_hit(self, layer: str) -> None: ...

    def index_healed(self) -> None:
        """An entry read from L2 that the semantic index lacked was indexed."""


class TieredCache:
    def __init__(self, *, l1: MemoryLayer, l2: Layer | None, semantic: "SemanticStage | None", bans: BanList,
                 clock: Callable[[], float], events: LayerEvents) -> None:
        self.l1 = l1
        self.l2 = l2
        self.semantic = semantic
        self.bans = bans
        self.clock = clock
        self.events = events
        # Keys invalidated on this replica: the next lookup of each goes upstream, even if
        # another replica stored a fresh copy in L2 meanwhile, so an operator sees every
        # replica answer anew after an invalidation. Bounded, and forgotten after an hour.
        self.refetch: TTLCache = TTLCache(maxsize=100_000, ttl=3600)
        self._background: set[asyncio.Task] = set()

    INDEX_WAIT_S = 0.05
    """How long a commit waits for its L3 add. Nearly always it is done in microseconds;
    when the add triggers an index rebuild (seconds, at hundreds of thousands of entries),
    it finishes in the background instead of holding the response."""

    def mark_refetch(self, keys) -> None:
        for k in keys:
            self.refetch[k] = True

    def _judge(self, entry: Entry, layer: str, key: Key, now: float, max_age: float | None) -> Hit | None:
        if self.bans.blocks(entry):
            self.events.banned_hit(layer)
            return None
        f = freshness(entry.created_at, entry.ttl, entry.grace, now, max_age)
        if f is Freshness.EXPIRED:
            return None
        return Hit(entry=entry, layer=layer, key=key, stale=f is Freshness.GRACE)

    def l1_hit(self, key: Key, max_age: float | None) -> Hit | None:
        """The synchronous fast path."""
        e = self.l1.get_now(key)
        if not e:
            return None
        return self._judge(e, "L1", key, self.clock(), max_age)

    async def exact(self, key: Key, max_age: float | None) -> Hit | None:
        hit = self.l1_hit(key, max_age)
        if hit is not None or self.l2 is None:
            return hit
        try:
            e = await self.l2.get(key)
        except LayerError as exc:
            self.events.layer_error("L2", "get", exc)
            return None
        if not e:
            return None
        hit = self._judge(e, "L2", key, self.clock(), max_age)
        if hit is not None:
            await self.l1.set(key, e)  # backfill; L1 keeps the entry's own purge time
        return hit

    async def get_entry(self, key: Key) -> Entry | Miss:
        """Any layer's copy of an entry (for semantic candidates, aliases, purges), judged by
        no one: MISS when no layer has it; raises LayerError when L2 could not answer, so a
        caller never mistakes an outage for an absence (and, say, deletes on it)."""
        e = self.l1.get_now(key)
        if e or self.l2 is None:
            return e
        e = await self.l2.get(key)
        if e:
            await self.l1.set(key, e)
        return e

    async def lookup(self, *, key: Key, max_age: float | None, semantic_text: str | None, partition: str,
                     threshold: float, on_exact_miss: Callable[[], None] | None = None) -> Lookup:
        """`on_exact_miss` is called when L1 and L2 have missed and the semantic stage is
        about to run: the caller can start what a miss will need (the cross-replica lock),
        overlapping the embedding."""
        if self.refetch and self.refetch.pop(key, None) is not None:
            return Lookup(None, NO_PROBE)  # invalidated here: answer anew, from no layer
        hit = self.l1_hit(key, max_age)
        if hit is not None:
            return Lookup(hit, NO_PROBE)
        if semantic_text is None or self.semantic is None or not self.semantic.searchable(partition):
            # No semantic lookup, or nothing in the partition to compare with (a new
            # conversation, tenant, model or parameter set): the commit embeds the text later.
            hit = await self.exact(key, max_age)
            if hit is not None and hit.layer == "L2" and self.semantic is not None:
                self.semantic.index_if_missing(key, hit.entry, None, self.clock())
            return Lookup(hit, NO_PROBE)
        if key in self.semantic.index:
            # A replica stored an answer under this very key (the index learns every add through
            # the stream), so L2 most likely has it: ask first, and embed only if it does not.
            # An embedding running beside an L2 hit would only slow it (it takes both cores).
            hit = await self.exact(key, max_age)
            if hit is not None:
                return Lookup(hit, NO_PROBE)
            embedding = None
        else:
            # L2 most likely misses: after an L1 miss, the embedding (the main cost of a semantic
            # lookup) runs while L2 answers, so a miss pays max(L2, embed), not their sum.
            embedding = asyncio.ensure_future(self.semantic.embed_one(semantic_text))
            try:
                hit = await self.exact(key, max_age)
            except BaseException:
                embedding.cancel()
                raise
            if hit is not None:
                if not (hit.layer == "L2" and self.semantic.index_if_missing(key, hit.entry, embedding, self.clock())):
                    embedding.cancel()
                embedding.add_done_callback(_consume)
                return Lookup(hit, NO_PROBE)
        if on_exact_miss is not None:
            on_exact_miss()
        return await self.semantic.lookup(self, text=semantic_text, partition=partition, threshold=threshold,
                                          max_age=max_age, embedding=embedding)

    async def commit(self, key: Key, entry: Entry, vector: np.ndarray | None) -> None:
        await self.l1.set(key, entry)
        if self.l2 is not None:
            try:
                await self.l2.set(key, entry)
            except LayerError as exc:
                self.events.layer_error("L2", "set", exc)
        if self.semantic is not None and entry.meta.semantic_text is not None:
            task = asyncio.ensure_future(self.semantic.add(key, entry, vector))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            try:
                await asyncio.wait_for(asyncio.shield(task), self.INDEX_WAIT_S)
            except TimeoutError:
                log.info("semantic add continues in the background (index rebuild)")

    async def delete(self, key: Key) -> bool:
        found = await self.l1.delete(key)
        if self.l2 is not None:
            try:
                found = await self.l2.delete(key) or found
            except LayerError as exc:
                self.events.layer_error("L2", "delete", exc)
        if self.semantic is not None:
            await self.semantic.remove(key)
        return found

    async def aclose(self) -> None:
        if self._background:  # let in-flight index adds finish (bounded), so no vector is half-published
            await asyncio.wait(list(self._background), timeout=5)
        await self.l1.aclose()
        if self.l2 is not None:
            await self.l2.aclose()


# imported late for the type name only
from cache.semantic_stage import SemanticStage  # noqa: E402
