"""L3: embed the semantic text, search the partition's nearest neighbours, re-check
each candidate against its stored entry (it may have expired, been banned or removed),
verify it, and serve the best one that passes its threshold. When the query and a
candidate share segments (a template, retrieved context: `policies.shared_context`), the
parts in which they differ must pass that threshold too, or the candidate is vetoed
("shared-context").

The threshold is either static (the request's, from `semantic.threshold` or a rule) or,
with calibration, the candidate's own: `policies.calibration.decide` on the candidate's
evidence pooled with its neighbours' (the other candidates of the same search within
`radius` of the query, weighted by closeness), starting from the request's threshold plus
a small margin.
Evidence is read through `cache.evidence_store`; when it cannot be read the decision is
the no-evidence one (the request's threshold), counted as a dependency error.

A verified candidate that is not served is a grey-zone candidate. The stage remembers it
(bounded, briefly) under the request's partition and text; once the fresh answer is
committed, the proxy takes it back (`take_grey`) and learns from the pair off the request
path: `confirm` compares the two answers, or a judge is asked (`proxy.judge`).

The index holds keys, not values: values come from the exact layers. Blocking work
(embedding, large FAISS searches) runs off the event loop inside the embedder and index.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from cachetools import TTLCache

from cache.breaker import CircuitBreaker, CircuitOpen
from cache.entry import Entry, Key
from cache.layer import LayerError
from embeddings.protocol import Embedder, EmbeddingError
from policies.calibration import Evidence, GlobalPrior, decide
from policies.shared_context import differing_parts

if TYPE_CHECKING:
    from cache.tiered import GreyCandidate
    from cache.evidence_store import EvidenceStore
    from cache.tiered import LayerEvents, Lookup, TieredCache

log = logging.getLogger("stratacache.semantic")

Verifier = Callable[[str, str], Any]
"""(query text, cached text) -> object with `.ok: bool` and `.reason: str`."""

EvidenceObserver = Callable[[str, bool], None]
"""(source, correct) for every observation recorded: "confirmation" | "judge" | "veto"."""

_NO_EVIDENCE = Evidence()


@dataclass(frozen=True, slots=True)
class Calibration:
    """Knobs of the calibrated decision.

    prior      -- the global curve P(correct | s) = sigmoid(a + b*s) and the offset prior; its
                  own `threshold` is replaced by each request's threshold plus `margin` (the
                  start, t0: where an entry without evidence stands)
    margin     -- how much stricter than the static threshold calibration starts; evidence
                  then moves each entry's threshold (at the default 0.944 + 0.0028 the
                  held-out false-hit rate is at most the static threshold's)
    radius     -- other candidates at or above this cosine to the query lend their evidence,
                  weighted (s - radius) / (1 - radius); the candidate's own counts 1
    neighbours -- at most this many of them
    """

    prior: GlobalPrior
    margin: float = 0.0
    radius: float = 0.75
    neighbours: int = 10


def answer_text(entry: Entry) -> str | None:
    """The first choice's text (chat content or completion text); None for tool calls,
    empty answers or a body that is not a completion."""
    try:
        body = orjson.loads(entry.body)
        choice = body["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(choice, dict):
        return None
    msg = choice.get("message")
    if isinstance(msg, dict):
        if msg.get("tool_calls") or msg.get("function_call"):
            return None
        text = msg.get("content")
    else:
        text = choice.get("text")
    return text if isinstance(text, str) and text.strip() else None


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


class SemanticStage:
    def __init__(self, *, embedder: Embedder, index: Any, store: Any | None, consider_threshold: float, k: int,
                 verifier: Verifier | None, events: "LayerEvents", breaker: CircuitBreaker | None = None,
                 calibration: Calibration | None = None, evidence: "EvidenceStore | None" = None,
                 grey_zone: bool = False, same_answer_similarity: float = 0.9, veto_weight: float = 0.0,
                 on_evidence: EvidenceObserver | None = None, grey_capacity: int = 4096,
                 grey_ttl_s: float = 600.0, shared_context_check: bool = True) -> None:
        self.embedder = embedder
        self.breaker = breaker or CircuitBreaker(5, 5.0, time.monotonic)
        self.index = index
        self.store = store
        self.consider = consider_threshold
        self.k = k
        self.verifier = verifier
        self.events = events
        self.calibration = calibration
        self.evidence = evidence
        self.grey_zone = grey_zone
        self.same_answer = same_answer_similarity
        self.veto_weight = veto_weight
        self.on_evidence = on_evidence
        self.shared_context_check = shared_context_check
        # grey-zone candidates awaiting their request's fresh answer: (partition, text) -> candidate
        self._grey: TTLCache = TTLCache(maxsize=grey_capacity, ttl=grey_ttl_s, timer=time.monotonic)
        self._tasks: set[asyncio.Task] = set()
        self._healing: set[Key] = set()  # keys index_if_missing is adding

    MAX_PART_CHECKS = 2
    """Candidates a lookup compares by their differing parts (an embedding each); a further
    candidate that needs it is not served. Bounds what a miss in templated traffic costs."""

    def searchable(self, partition: str) -> bool:
        """False when a search of `partition` would find nothing: a lookup there need not embed."""
        return self.index.holds(partition)

    async def embed_one(self, text: str) -> np.ndarray:
        """Raises EmbeddingError or TimeoutError; fails fast while the breaker is open."""
        return (await self.embed(text))[0]

    async def embed(self, *texts: str) -> np.ndarray:
        """One row per text. Raises EmbeddingError or TimeoutError; fails fast while the breaker is open."""
        try:
            self.breaker.check()
        except CircuitOpen as exc:
            raise EmbeddingError("embedder circuit open") from exc
        t0 = time.perf_counter()
        try:
            vectors = await self.embedder.embed(list(texts))
        except (EmbeddingError, TimeoutError):
            self.breaker.failure()
            raise
        self.breaker.success()
        self.events.layer_latency("embedder", "embed", time.perf_counter() - t0)
        return vectors

    async def _parts_agree(self, parts: tuple[str, str], threshold: float) -> bool:
        """Whether the parts in which two texts with text in common (a template, retrieved
        context) differ are at least `threshold` similar (see policies.shared_context). When
        they cannot be embedded, False: the candidate is not served."""
        try:
            a, b = await self.embed(*parts)
        except (EmbeddingError, TimeoutError) as exc:
            self.events.layer_error("embedder", "embed", exc)
            return False
        return float(np.dot(a, b)) >= threshold

    async def lookup(self, cache: "TieredCache", *, text: str, partition: str, threshold: float,
                     max_age: float | None, embedding: "asyncio.Future[np.ndarray] | None" = None) -> "Lookup":
        """`embedding`: the text's embedding already under way (started by the caller), if any."""
        from cache.tiered import NO_PROBE, GreyCandidate, Hit, Lookup, SemanticProbe

        try:
            vec = await (embedding if embedding is not None else self.embed_one(text))
        except (EmbeddingError, TimeoutError) as exc:
            self.events.layer_error("embedder", "embed", exc)
            return Lookup(None, NO_PROBE)
        cal = self.calibration
        depth = max(self.k, cal.neighbours + 1) if cal is not None else self.k
        try:
            t0 = time.perf_counter()
            candidates = await self.index.search(vec, partition, depth)
            self.events.layer_latency("index", "search", time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError subclasses; fail open
            self.events.layer_error("index", "search", exc)
            return Lookup(None, SemanticProbe(vector=vec))
        candidates = sorted(candidates, key=lambda c: -c[1])
        prior = replace(cal.prior, threshold=min(1.0, threshold + cal.margin)) if cal is not None else None
        evidence: dict[Key, Evidence] | None = None
        best: float | None = None
        verdict: str | None = None
        applied: tuple[float, str] | None = None
        grey: GreyCandidate | None = None
        part_checks = 0
        for key, sim in candidates[:self.k]:
            if sim < self.consider:
                break
            sim = float(sim)
            if best is None:
                best = sim
            try:
                entry = await cache.get_entry(key)
            except LayerError as exc:
                self.events.layer_error("L2", "get", exc)
                continue
            if not entry:
                await self.remove(key)  # expired or evicted from the shared layer: drop it everywhere
                continue
            hit = cache._judge(entry, "L3", key, cache.clock(), max_age)
            if hit is None or entry.meta.partition != partition or entry.meta.semantic_text is None:
                continue
            if self.verifier is not None:
                v = self.verifier(text, entry.meta.semantic_text)
                if not v.ok:
                    verdict = verdict or v.reason
                    if self.veto_weight > 0 and self.evidence is not None:
                        self._spawn(self.record(key, sim, False, source="veto", weight=self.veto_weight))
                    continue
            if prior is None:
                serve, t, rule = sim >= threshold, threshold, "static"
            else:
                if evidence is None:
                    evidence = await self._read_evidence(candidates)
                d = decide(self._pool(key, candidates, evidence), sim, prior, consider_threshold=self.consider)
                serve, t, rule = d.serve, d.threshold, d.reason
            if applied is None:
                applied = (t, rule)
            if serve and self.shared_context_check:
                parts = differing_parts(text, entry.meta.semantic_text)
                if parts is not None and (part_checks >= self.MAX_PART_CHECKS
                                          or not await self._parts_agree(parts, t)):
                    # a veto, not a grey-zone pair: the whole texts' similarity says nothing
                    # here, and learning from it would teach the entry's threshold the wrong lesson
                    part_checks += 1
                    verdict = verdict or "shared-context"
                    continue
            if serve:
                return Lookup(Hit(entry=entry, layer="L3", key=key, stale=hit.stale, similarity=sim,
                                             verdict="ok", threshold=t, rule=rule),
                              SemanticProbe(vector=vec, best_similarity=best, verdict="ok", threshold=t, rule=rule))
            verdict = verdict or "below-threshold"
            if grey is None:
                grey = GreyCandidate(key=key, similarity=sim, cached_text=entry.meta.semantic_text, query_text=text,
                                     threshold=t)
        if grey is not None and self.grey_zone:
            self._grey[(partition, text)] = grey
        return Lookup(None, SemanticProbe(vector=vec, best_similarity=best, verdict=verdict,
                                             threshold=applied[0] if applied else None,
                                             rule=applied[1] if applied else None, grey=grey))

    def _pool(self, key: Key, candidates: list[tuple[Key, float]], evidence: dict[Key, Evidence]) -> Evidence:
        cal = self.calibration
        parts = [(evidence.get(key, _NO_EVIDENCE), 1.0)]
        for other, sim in candidates:
            if len(parts) > cal.neighbours or sim < cal.radius:
                break
            if other != key:
                parts.append((evidence.get(other, _NO_EVIDENCE), (float(sim) - cal.radius) / (1.0 - cal.radius)))
        return Evidence.pool(parts)

    async def _read_evidence(self, candidates: list[tuple[Key, float]]) -> dict[Key, Evidence]:
        """Evidence of every candidate that can count; on failure none (the no-evidence decision)."""
        if self.evidence is None:
            return {}
        floor = min(self.consider, self.calibration.radius)
        keys = [k for k, s in candidates if s >= floor]
        try:
            return await self.evidence.get_many(keys)
        except LayerError as exc:
            self.events.layer_error("evidence", "get", exc)
            return {}

    # -- learning from grey-zone pairs (off the request path) --------------------------------
    def take_grey(self, partition: str, text: str | None) -> "GreyCandidate | None":
        """The grey-zone candidate a lookup for (partition, text) left, once."""
        if text is None or not self._grey:
            return None
        return self._grey.pop((partition, text), None)

    async def record(self, key: Key, similarity: float, correct: bool, *, source: str,
                     weight: float = 1.0) -> bool:
        """Append one observation to `key`'s evidence; False when the store failed (counted)."""
        if self.evidence is None:
            return False
        try:
            await self.evidence.add(key, similarity, correct, weight)
        except LayerError as exc:
            self.events.layer_error("evidence", "add", exc)
            return False
        if self.on_evidence is not None:
            self.on_evidence(source, correct)
        return True

    async def confirm(self, cache: "TieredCache", grey: "GreyCandidate", fresh: Entry) -> bool | None:
        """Exact-match confirmation: would serving the grey candidate have been right?

        Compares the request's fresh answer with the candidate's stored one: the same when
        their normalised texts are equal or the cosine of their embeddings is at least
        `same_answer_similarity`. Records the observation on the candidate; None (and
        nothing recorded) when either answer has no text or the embedder fails.
        """
        try:
            cached = await cache.get_entry(grey.key)
        except LayerError:
            return None
        if not cached:
            return None
        a, b = answer_text(fresh), answer_text(cached)
        if a is None or b is None:
            return None
        if _normalised(a) == _normalised(b):
            same = True
        else:
            try:
                va, vb = await self.embedder.embed([a, b])
            except (EmbeddingError, TimeoutError) as exc:
                self.events.layer_error("embedder", "confirm", exc)
                return None
            same = float(np.dot(va, vb)) >= self.same_answer
        await self.record(grey.key, grey.similarity, same, source="confirmation")
        return same

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- index maintenance --------------------------------------------------------------------
    HEAL_AFTER_S = 10.0
    """How old an entry read from L2 must be before its absence from the index counts as a
    gap rather than a peer's add still on its way through the stream."""
    MAX_HEALING = 2
    """Heals in flight at most: beyond that an L2 hit is not indexed (its next one may be),
    so a burst of them never queues embeddings ahead of the lookups that wait for theirs."""

    def index_if_missing(self, key: Key, entry: Entry, embedding: "asyncio.Future[np.ndarray] | None",
                         now: float) -> bool:
        """On an L2 hit: when the index lacks an entry that could be found by meaning (it was
        stored by a replica with L3 off, or while the embedder or Redis failed), index it now,
        in the background, from `embedding` (the query's, already under way; the exact key
        matched, so it is the entry's text) or a new one. Returns whether it uses `embedding`."""
        if (entry.meta.semantic_text is None or key in self.index or key in self._healing
                or len(self._healing) >= self.MAX_HEALING or now - entry.created_at < self.HEAL_AFTER_S):
            return False
        self._healing.add(key)

        async def heal() -> None:
            try:
                vector = None
                if embedding is not None:
                    try:
                        vector = await embedding
                    except (EmbeddingError, TimeoutError) as exc:
                        self.events.layer_error("embedder", "embed", exc)
                        return
                await self.add(key, entry, vector)
                self.events.index_healed()
            finally:
                self._healing.discard(key)

        self._spawn(heal())
        return embedding is not None

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

    async def sweep_orphans(self, cache: "TieredCache", batch: int = 2000) -> int:
        """Remove vectors whose entries left the shared layer (expired or evicted), so the
        Redis copy of the index does not grow without bound. Checks the whole local index
        in batches of one pipelined round trip each; returns how many were removed."""
        if cache.l2 is None or not hasattr(cache.l2, "exists_many"):
            return 0
        keys = list(self.index.keys())
        gone = 0
        for i in range(0, len(keys), batch):
            chunk = keys[i:i + batch]
            try:
                present = await cache.l2.exists_many(chunk)
            except LayerError as exc:
                self.events.layer_error("L2", "exists", exc)
                return gone
            for key, ok in zip(chunk, present):
                if not ok:
                    await self.remove(key)
                    gone += 1
        return gone

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
        if self.evidence is not None:
            try:
                await self.evidence.delete(key)
            except LayerError as exc:
                self.events.layer_error("evidence", "delete", exc)

    async def aclose(self) -> None:
        """Cancel background recordings (a shutdown never waits for them)."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._grey.clear()
