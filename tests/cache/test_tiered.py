"""TieredCache: commit order, the L3 add that must not hold a response, and the lookup of a
partition with nothing in it (no embedding)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np

from cache.bans import BanList
from cache.memory_layer import MemoryLayer
from cache.semantic_index import SemanticIndex
from cache.semantic_stage import SemanticStage
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


class CountingEmbedder:
    """Counts the texts it embeds; every text gets the same vector."""

    dim = 4
    model_name = "counting"

    def __init__(self) -> None:
        self.embedded: list[str] = []

    async def embed(self, texts):
        self.embedded.extend(texts)
        return np.tile(np.array([1, 0, 0, 0], np.float32), (len(texts), 1))


def semantic_entry(text: str, partition: str):
    e = entry()
    return replace(e, meta=replace(e.meta, partition=partition, semantic_text=text))


async def test_a_lookup_in_an_empty_partition_does_not_embed():
    embedder = CountingEmbedder()
    index = SemanticIndex(dim=4)
    stage = SemanticStage(embedder=embedder, index=index, store=None, consider_threshold=0.8, k=4, verifier=None,
                          events=LayerEvents())
    cache = TieredCache(l1=MemoryLayer(1 << 20, time.time), l2=None, semantic=stage, bans=BanList(),
                        clock=time.time, events=LayerEvents())

    async def lookup(key: str, partition: str):
        return await cache.lookup(key=key, max_age=None, semantic_text="Can you expand on that?",
                                  partition=partition, threshold=0.9)

    look = await lookup("k1", "conversation-a")
    assert look.hit is None and look.probe.vector is None
    assert embedder.embedded == []  # nothing to compare with: the miss went upstream at once
    await cache.commit("k1", semantic_entry("Can you expand on that?", "conversation-a"), None)
    assert embedder.embedded == ["Can you expand on that?"]  # the commit embeds it, once
    assert index.holds("conversation-a") and "k1" in index
    # once the partition holds an entry, a lookup there embeds and searches: the same text hits
    look = await lookup("k2", "conversation-a")
    assert look.hit is not None and look.hit.layer == "L3" and look.hit.key == "k1"
    assert len(embedder.embedded) == 2
    # another conversation's partition is still empty: no embedding, and no hit across conversations
    look = await lookup("k3", "conversation-b")
    assert look.hit is None and len(embedder.embedded) == 2 and not index.holds("conversation-b")
    await cache.aclose()


class HealCounter(LayerEvents):
    def __init__(self) -> None:
        self.healed = 0

    def index_healed(self) -> None:
        self.healed += 1


class NetworkedLayer(MemoryLayer):
    """Stands in for L2: a read gives the event loop a turn, as a round trip to Redis does."""

    async def get(self, key):
        await asyncio.sleep(0)
        return await super().get(key)


def _healing_cache(clock):
    embedder = CountingEmbedder()
    events = HealCounter()
    stage = SemanticStage(embedder=embedder, index=SemanticIndex(dim=4), store=None, consider_threshold=0.8, k=4,
                          verifier=None, events=events)
    cache = TieredCache(l1=MemoryLayer(1 << 20, clock), l2=NetworkedLayer(1 << 20, clock), semantic=stage,
                        bans=BanList(), clock=clock, events=events)
    return cache, stage, embedder, events


async def _settle(stage) -> None:
    while stage._tasks:
        await asyncio.gather(*list(stage._tasks))


async def test_an_l2_hit_the_index_lacks_is_indexed_and_then_found_by_meaning(clock):
    """An entry stored by a replica with L3 off (or while the embedder was down) becomes
    findable by meaning on its first L2 hit here."""
    cache, stage, embedder, events = _healing_cache(clock)
    old = replace(semantic_entry("What is the capital of France?", "p"), created_at=clock() - 20)
    await cache.l2.set("k1", old)

    async def lookup(key: str, text: str):
        return await cache.lookup(key=key, max_age=None, semantic_text=text, partition="p", threshold=0.9)

    look = await lookup("k1", "What is the capital of France?")
    assert look.hit is not None and look.hit.layer == "L2"
    await _settle(stage)
    assert "k1" in stage.index and events.healed == 1
    assert embedder.embedded == ["What is the capital of France?"]
    para = await lookup("k2", "What's the capital city of France?")
    assert para.hit is not None and para.hit.layer == "L3" and para.hit.key == "k1"
    await cache.aclose()


async def test_the_heal_reuses_the_embedding_the_lookup_started(clock):
    cache, stage, embedder, events = _healing_cache(clock)
    await cache.commit("seed", semantic_entry("seed text", "p"), None)  # the partition is searchable
    await _settle(stage)
    await cache.l2.set("k1", replace(semantic_entry("How do tides work?", "p"), created_at=clock() - 20))
    embedder.embedded.clear()
    look = await cache.lookup(key="k1", max_age=None, semantic_text="How do tides work?", partition="p",
                              threshold=0.9)
    assert look.hit is not None and look.hit.layer == "L2"
    await _settle(stage)
    assert "k1" in stage.index and embedder.embedded == ["How do tides work?"]  # once: the lookup's own
    await cache.aclose()


async def test_a_recent_l2_entry_is_left_to_its_writer(clock):
    """A peer's add may still be on its way through the stream: no second embedding for it."""
    cache, stage, embedder, events = _healing_cache(clock)
    await cache.l2.set("k1", replace(semantic_entry("How do tides work?", "p"), created_at=clock() - 1))
    look = await cache.lookup(key="k1", max_age=None, semantic_text="How do tides work?", partition="p",
                              threshold=0.9)
    assert look.hit is not None and look.hit.layer == "L2"
    await _settle(stage)
    assert "k1" not in stage.index and events.healed == 0 and embedder.embedded == []
    await cache.aclose()


async def test_heals_in_flight_are_bounded(clock):
    """A burst of L2 hits on unindexed entries starts at most MAX_HEALING embeddings; the
    others are left for a later hit, so lookups never queue behind them."""
    cache, stage, embedder, events = _healing_cache(clock)
    gate = asyncio.Event()
    real_embed = embedder.embed

    async def slow_embed(texts):
        await gate.wait()
        return await real_embed(texts)

    embedder.embed = slow_embed
    for i in range(6):
        await cache.l2.set(f"k{i}", replace(semantic_entry(f"question {i}", "p"), created_at=clock() - 20))
    for i in range(6):
        await cache.lookup(key=f"k{i}", max_age=None, semantic_text=f"question {i}", partition="p", threshold=0.9)
    assert len(stage._healing) == SemanticStage.MAX_HEALING
    gate.set()
    await _settle(stage)
    assert events.healed == SemanticStage.MAX_HEALING and not stage._healing
    await cache.l1.delete("k5")  # evicted here: its next hit comes from L2 again
    await cache.lookup(key="k5", max_age=None, semantic_text="question 5", partition="p", threshold=0.9)
    await _settle(stage)
    assert "k5" in stage.index  # a later L2 hit heals what the burst left
    await cache.aclose()


async def test_an_l2_hit_on_an_indexed_key_runs_no_embedding(clock):
    """A key the index holds was stored by some replica, so L2 is asked first: its hit costs
    no embedding (one running beside it would take both cores), and its miss embeds once."""
    cache, stage, embedder, events = _healing_cache(clock)
    await cache.commit("k1", replace(semantic_entry("How do tides work?", "p"), created_at=clock()), None)
    await _settle(stage)
    await cache.l1.delete("k1")  # as on another replica, or after an L1 eviction
    embedder.embedded.clear()
    look = await cache.lookup(key="k1", max_age=None, semantic_text="How do tides work?", partition="p",
                              threshold=0.9)
    assert look.hit is not None and look.hit.layer == "L2" and embedder.embedded == []
    await cache.l1.delete("k1")
    await cache.l2.delete("k1")  # expired from the shared layer meanwhile
    look = await cache.lookup(key="k1", max_age=None, semantic_text="How do tides work?", partition="p",
                              threshold=0.9)
    assert embedder.embedded == ["How do tides work?"]  # embedded once, for the semantic stage
    await cache.aclose()
