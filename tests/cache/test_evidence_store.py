"""Calibration evidence: the stores against a real redis-server, and the L3 stage's
calibrated decision (pooled neighbour evidence, fail open) with a fake index and embedder."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

# pytest puts tests/ on sys.path, where tests/cache/ would shadow the `cache` package as a
# namespace package; a regular package wins once the repository root is on the path.
if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)

from cache.bans import BanList
from cache.breaker import CircuitBreaker
from cache.entry import Entry, EntryMeta
from cache.evidence_store import MemoryEvidenceStore, RedisEvidenceStore
from cache.layer import LayerError
from cache.memory_layer import MemoryLayer
from cache.semantic_stage import Calibration, SemanticStage, answer_text
from cache.tiered import LayerEvents, TieredCache
from policies.calibration import DEFAULT_CAPACITY, Evidence, GlobalPrior
from tests.conftest import FakeClock, free_port

from tests.cache.conftest import CLIENT_TIMEOUT as TIMEOUT


def redis_store(client, clock=None, **kw) -> RedisEvidenceStore:
    return RedisEvidenceStore(client, prefix="t:", timeout_s=TIMEOUT,
                              breaker=CircuitBreaker(2, 60.0, clock or FakeClock()), clock=clock or FakeClock(), **kw)


async def test_evidence_round_trips_through_redis_between_replicas(clients):
    a, b = redis_store(clients()), redis_store(clients())
    await a.add("k1", 0.91, True)
    ev = await a.add("k1", 0.96, False, weight=0.25)
    assert [(o.similarity, o.correct, o.weight) for o in ev.observations] == [(0.91, True, 1.0), (0.96, False, 0.25)]
    got = await b.get_many(["k1", "k2"])
    assert got["k1"] == ev and got["k2"] == Evidence()
    raw = await clients().hget("t:ev", "k1")
    assert orjson.loads(raw) == ev.to_dict()  # one hash, field = entry key, value = Evidence.to_dict()


async def test_evidence_is_bounded_per_key_and_forgotten_on_delete(clients):
    s = redis_store(clients())
    for i in range(DEFAULT_CAPACITY + 8):
        await s.add("k", 0.8 + i / 1000, i % 2 == 0)
    (ev,) = (await redis_store(clients()).get_many(["k"])).values()
    assert len(ev) == DEFAULT_CAPACITY
    assert ev.observations[-1].similarity == pytest.approx(0.8 + (DEFAULT_CAPACITY + 7) / 1000)
    await s.delete("k")
    assert (await redis_store(clients()).get_many(["k"]))["k"] == Evidence()


async def test_the_number_of_entries_with_evidence_is_bounded(clients):
    s = redis_store(clients(), max_keys=10)
    for i in range(64):  # the bound is enforced every 64 adds
        await s.add(f"k{i}", 0.9, True)
    assert await clients().hlen("t:ev") == 10


async def test_reads_go_through_a_local_cache_that_expires(clients):
    clock = FakeClock()
    writer, reader = redis_store(clients()), redis_store(clients(), clock, cache_ttl_s=30.0)
    calls: list[list] = []
    hmget = reader.client.hmget

    def counting_hmget(name, keys):
        calls.append(list(keys))
        return hmget(name, keys)

    reader.client.hmget = counting_hmget
    await writer.add("k", 0.9, True)
    assert len((await reader.get_many(["k", "none"]))["k"]) == 1
    await writer.add("k", 0.9, False)
    assert len((await reader.get_many(["k", "none"]))["k"]) == 1  # served locally, no round trip
    assert calls == [["k", "none"]]  # the empty evidence of "none" is cached too
    clock.advance(31)
    assert len((await reader.get_many(["k"]))["k"]) == 2
    assert calls == [["k", "none"], ["k"]]


async def test_concurrent_appends_from_two_replicas_are_all_kept(clients):
    a, b = redis_store(clients()), redis_store(clients(), cas_retries=20)
    a.cas_retries = 20
    await asyncio.gather(*[s.add("k", 0.85 + i / 100, True) for i in range(6) for s in (a, b)])
    (ev,) = (await redis_store(clients()).get_many(["k"])).values()
    assert len(ev) == 12


async def test_unreadable_evidence_is_no_evidence(clients):
    await clients().hset("t:ev", "k", b"{not json")
    assert (await redis_store(clients()).get_many(["k"]))["k"] == Evidence()


async def test_an_outage_raises_layer_error_then_fails_fast(clients):
    dead = clients(f"redis://127.0.0.1:{free_port()}/0")
    clock = FakeClock()
    s = redis_store(dead, clock)
    for _ in range(2):
        with pytest.raises(LayerError):
            await s.get_many(["k"])
    with pytest.raises(LayerError, match="circuit open"):
        await s.add("k", 0.9, True)


async def test_memory_store_round_trip_and_bound():
    s = MemoryEvidenceStore(max_keys=2)
    await s.add("a", 0.9, True)
    await s.add("b", 0.9, False)
    await s.add("c", 0.9, False)
    got = await s.get_many(["a", "b", "c"])
    assert got["a"] == Evidence() and len(got["b"]) == len(got["c"]) == 1
    assert len(s) == 2


# -- the calibrated decision in the L3 stage --------------------------------------------------

PRIOR = GlobalPrior(-8.065, 10.22, 0.944, 0.02, 2.0)
PART = "p"


class Events(LayerEvents):
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def layer_error(self, layer: str, op: str, exc: BaseException) -> None:
        self.errors.append((layer, op))


class FixedIndex:
    """Returns the candidates it was given, whatever the query."""

    def __init__(self, candidates: list[tuple[str, float]]) -> None:
        self.candidates = candidates

    async def search(self, vector, partition, k):
        return self.candidates[:k]

    def holds(self, partition):
        return bool(self.candidates)

    def __contains__(self, key):
        return False  # no request's own key is a candidate here

    async def remove(self, key):
        return True


class FixedEmbedder:
    dim = 4

    def __init__(self, vectors: dict[str, np.ndarray] | None = None) -> None:
        self.vectors = vectors or {}

    async def embed(self, texts):
        return np.stack([self.vectors.get(t, np.array([1, 0, 0, 0], np.float32)) for t in texts])


def entry(text: str, answer: str, clock: FakeClock) -> Entry:
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                      "finish_reason": "stop"}]})
    return Entry(body=body, frames=(), usage_frame=None, created_at=clock(), ttl=3600, grace=0,
                 meta=EntryMeta(tenant="t", namespace="", route="chat", model="m", partition=PART,
                                semantic_text=text))


async def stage_with(candidates, evidence_store, clock, *, calibrated=True, embedder=None):
    events = Events()
    stage = SemanticStage(embedder=embedder or FixedEmbedder(), index=FixedIndex(candidates), store=None,
                          consider_threshold=0.8, k=4, verifier=None, events=events,
                          calibration=Calibration(PRIOR, radius=0.75, neighbours=10) if calibrated else None,
                          evidence=evidence_store, grey_zone=True)
    cache = TieredCache(l1=MemoryLayer(1 << 20, clock), l2=None, semantic=stage, bans=BanList(), clock=clock,
                        events=events)
    for key, _ in candidates:
        await cache.l1.set(key, entry(f"text of {key}", f"answer of {key}", clock))
    return stage, cache, events


async def lookup(cache, threshold=0.944):
    return await cache.lookup(key="query", max_age=None, semantic_text="the query", partition=PART,
                              threshold=threshold)


async def test_without_evidence_the_request_threshold_applies(clock):
    stage, cache, _ = await stage_with([("seed", 0.95)], MemoryEvidenceStore(), clock)
    look = await lookup(cache)
    assert look.hit is not None and look.hit.threshold == pytest.approx(0.944) and look.hit.rule == "global"
    assert (await lookup(cache, threshold=0.96)).hit is None


async def test_calibration_starts_a_margin_above_the_request_threshold(clock):
    stage, cache, _ = await stage_with([("seed", 0.945)], MemoryEvidenceStore(), clock)
    stage.calibration = Calibration(PRIOR, margin=0.0028)
    look = await lookup(cache)
    assert look.hit is None and look.probe.threshold == pytest.approx(0.9468) and look.probe.rule == "global"


async def test_bad_evidence_stops_and_good_evidence_admits(clock):
    store = MemoryEvidenceStore()
    stage, cache, _ = await stage_with([("seed", 0.95)], store, clock)
    for _ in range(3):
        await store.add("seed", 0.96, False)
    look = await lookup(cache)
    assert look.hit is None and look.probe.rule == "calibrated" and look.probe.threshold > 0.95
    assert look.probe.grey is not None and look.probe.grey.key == "seed"

    store2 = MemoryEvidenceStore()
    stage, cache, _ = await stage_with([("seed", 0.92)], store2, clock)
    assert (await lookup(cache)).hit is None
    for _ in range(3):
        await store2.add("seed", 0.91, True)
    look = await lookup(cache)
    assert look.hit is not None and look.hit.key == "seed" and look.hit.threshold < 0.92


async def test_neighbours_lend_evidence_by_closeness(clock):
    store = MemoryEvidenceStore()
    # "far" is under the consider threshold but within the radius: its evidence counts, weighted
    stage, cache, _ = await stage_with([("seed", 0.95), ("near", 0.90), ("far", 0.76)], store, clock)
    for _ in range(4):
        await store.add("near", 0.96, False)
    look = await lookup(cache)
    assert look.hit is None and look.probe.threshold > 0.95  # the seed itself has no evidence
    stage.calibration = Calibration(PRIOR, radius=0.91, neighbours=10)  # "near" now too far to count
    assert (await lookup(cache)).hit is not None


async def test_evidence_store_outage_falls_back_to_the_request_threshold(clock, clients):
    dead = clients(f"redis://127.0.0.1:{free_port()}/0")
    stage, cache, events = await stage_with([("seed", 0.95)], redis_store(dead), clock)
    look = await lookup(cache)
    assert look.hit is not None and look.hit.threshold == pytest.approx(0.944)
    assert ("evidence", "get") in events.errors
    assert await stage.record("seed", 0.9, True, source="judge") is False
    assert ("evidence", "add") in events.errors


async def test_static_path_when_calibration_is_off(clock):
    store = MemoryEvidenceStore()
    await store.add("seed", 0.96, False)
    stage, cache, _ = await stage_with([("seed", 0.95)], store, clock, calibrated=False)
    look = await lookup(cache)
    assert look.hit is not None and look.hit.rule == "static" and look.hit.threshold == pytest.approx(0.944)


async def test_grey_candidate_is_remembered_once_and_confirmed_off_path(clock):
    store = MemoryEvidenceStore()
    same = np.array([1, 0, 0, 0], np.float32)
    other = np.array([0, 1, 0, 0], np.float32)
    emb = FixedEmbedder({"answer of seed": same, "a fresh answer": same, "something else": other})
    stage, cache, _ = await stage_with([("seed", 0.90)], store, clock, embedder=emb)
    look = await lookup(cache)
    assert look.hit is None and look.probe.grey.similarity == pytest.approx(0.90)
    grey = stage.take_grey(PART, "the query")
    assert grey is not None and stage.take_grey(PART, "the query") is None
    assert await stage.confirm(cache, grey, entry("the query", "a fresh answer", clock)) is True
    assert await stage.confirm(cache, grey, entry("the query", "something else", clock)) is False
    assert await stage.confirm(cache, grey, entry("the query", "  ANSWER of   seed ", clock)) is True  # normalised
    ev = (await store.get_many(["seed"]))["seed"]
    assert [o.correct for o in ev.observations] == [True, False, True]


def test_answer_text_of_chat_completion_and_tool_calls():
    def e(choice):
        return Entry(body=orjson.dumps({"choices": [choice]}), frames=(), usage_frame=None, created_at=0, ttl=1,
                     grace=0, meta=EntryMeta("t", "", "chat", "m", PART))

    assert answer_text(e({"message": {"content": "hi"}, "finish_reason": "stop"})) == "hi"
    assert answer_text(e({"text": "done", "finish_reason": "stop"})) == "done"
    assert answer_text(e({"message": {"content": None, "tool_calls": [{"id": "x"}]}})) is None
    assert answer_text(e({"message": {"content": "  "}})) is None
