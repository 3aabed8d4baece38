"""L3: embed the semantic text, search the partition's nearest neighbours, re-check
each candidate against its stored entry (it may have expired, been banned or removed),
verify it, and serve the best one that passes.

The index holds keys, not values: values come from the exact layers. Blocking work
(embedding, large FAISS searches) runs off the event loop inside the embedder and index.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cache.breaker import CircuitBreaker, CircuitOpen
from cache.entry import Entry, Key
from cache.layer import LayerError
from embeddings.protocol import Embedder, EmbeddingError

if TYPE_CHECKING:
    from cache.tiered import LayerEvents, Lookup, TieredCache

log = logging.getLogger("stratacache.semantic")

Verifier = Callable[[str, str], Any]
"""(query text, cached text) -> object with `.ok: bool` and `.reason: str`."""


class SemanticStage:
    def __init__(self, *, embedder: Embedder, index: Any, store: Any | None, consider_threshold: float, k: int,
                 verifier: Verifier | None, events: "LayerEvents", breaker: CircuitBreaker | None = None) -> None:
        self.embedder = embedder
        self.breaker = breaker or CircuitBreaker(5, 5.0, time.monotonic)
        self.index = index
        self.store = store
        self.consider = consider_threshold
        self.k = k
        self.verifier = verifier
        self.events = events

    async def embed_one(self, text: str) -> np.ndarray:
        """Raises EmbeddingError or TimeoutError; fails fast while the breaker is open."""
        try:
            self.breaker.check()
        except CircuitOpen as exc:
            raise EmbeddingError("embedder circuit open") from exc
        try:
            vec = (await self.embedder.embed([text]))[0]
        except (EmbeddingError, TimeoutError):
            self.breaker.failure()
            raise
        self.breaker.success()
        return vec

    async def lookup(self, cache: "TieredCache", *, text: str, partition: str, threshold: float,
                     max_age: float | None) -> "Lookup":
        from cache.tiered import NO_PROBE, Hit, Lookup, SemanticProbe

        try:
            vec = await self.embed_one(text)
        except (EmbeddingError, TimeoutError) as exc:
            self.events.layer_error("embedder", "embed", exc)
            return Lookup(None, NO_PROBE)
        try:
            candidates = await self.index.search(vec, partition, self.k)
        except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError subclasses; fail open
            self.events.layer_error("index", "search", exc)
            return Lookup(None, SemanticProbe(vector=vec))
        best: float | None = None
        verdict: str | None = None
        for key, sim in sorted(candidates, key=lambda c: -c[1]):
            if sim < self.consider:
                break
            if best is None:
                best = float(sim)
            entry = await cache.get_entry(key)
            if not entry:
                await self._forget(key)  # expired or evicted from the exact layers
                continue
            hit = cache._judge(entry, "L3", key, cache.clock(), max_age)
            if hit is None or entry.meta.partition != partition or entry.meta.semantic_text is None:
                continue
            if self.verifier is not None:
                v = self.verifier(text, entry.meta.semantic_text)
                if not v.ok:
                    verdict = verdict or v.reason
                    continue
            if sim < threshold:
                verdict = verdict or "below-threshold"
                continue
            return Lookup(Hit(entry=entry, layer="L3", key=key, stale=hit.stale, similarity=float(sim), verdict="ok"),
                          SemanticProbe(vector=vec, best_similarity=best, verdict="ok"))
        return Lookup(None, SemanticProbe(vector=vec, best_similarity=best, verdict=verdict))

    async def add(self, key: Key, entry: Entry, vector: np.ndarray | None) -> None:
        text = entry.meta.semantic_text
        if text is None:
            return
        if vector is None:
            try:
                vector = await self.embed_one(text)
            except (EmbeddingError, TimeoutError) as exc:
                self.events.layer_error("embedder", "embed", exc)
                return
        try:
            await self.index.add(key, vector, entry.meta.partition)
        except Exception as exc:  # noqa: BLE001
            self.events.layer_error("index", "add", exc)
        if self.store is not None:
            try:
                await self.store.publish_add(key, vector, entry.meta.partition)
            except LayerError as exc:
                self.events.layer_error("vector_store", "add", exc)

    async def _forget(self, key: Key) -> None:
        try:
            await self.index.remove(key)
        except Exception as exc:  # noqa: BLE001
            self.events.layer_error("index", "remove", exc)

    async def remove(self, key: Key) -> None:
        await self._forget(key)
        if self.store is not None:
            try:
                await self.store.publish_remove(key)
            except LayerError as exc:
                self.events.layer_error("vector_store", "remove", exc)
