"""The L3 stage's shared-context check, with a fake embedder and a real FAISS index."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from cache.bans import BanList
from cache.memory_layer import MemoryLayer
from cache.semantic_index import SemanticIndex
from cache.semantic_stage import SemanticStage
from cache.tiered import LayerEvents, TieredCache
from tests.cache.test_layer_contract import entry

CONTEXT = "Context: a long passage that every request of this app carries.\n\nQuestion: "


class TemplateEmbedder:
    """Every whole text (with the context) embeds alike; a bare question embeds to its own
    axis, so different questions are orthogonal and "same" ones (the `alike` map) identical."""

    dim = 8
    model_name = "template"

    def __init__(self, alike: dict[str, str] | None = None) -> None:
        self.alike = alike or {}
        self.axes: dict[str, int] = {}
        self.calls: list[list[str]] = []

    async def embed(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            if text.startswith("Context:"):
                out[row, 0] = 1.0
            else:
                name = self.alike.get(text, text)
                out[row, 1 + self.axes.setdefault(name, len(self.axes) % (self.dim - 1))] = 1.0
        return out


async def cache_with(embedder: TemplateEmbedder, questions: list[str]) -> TieredCache:
    stage = SemanticStage(embedder=embedder, index=SemanticIndex(dim=embedder.dim), store=None,
                          consider_threshold=0.8, k=4, verifier=None, events=LayerEvents())
    cache = TieredCache(l1=MemoryLayer(1 << 20, time.time), l2=None, semantic=stage, bans=BanList(),
                        clock=time.time, events=LayerEvents())
    for i, q in enumerate(questions):
        e = entry(f"answer {i}")
        await cache.commit(f"k{i}", replace(e, meta=replace(e.meta, semantic_text=CONTEXT + q)), None)
    return cache


async def lookup(cache: TieredCache, question: str):
    return await cache.lookup(key="query", max_age=None, semantic_text=CONTEXT + question, partition="p",
                              threshold=0.9)


async def test_a_question_alike_only_through_the_context_is_vetoed():
    embedder = TemplateEmbedder()
    cache = await cache_with(embedder, ["When was it signed?"])
    look = await lookup(cache, "Which war did it end?")
    assert look.hit is None and look.probe.verdict == "shared-context"
    assert look.probe.best_similarity == 1.0  # what the whole texts alone would have served
    assert ["Which war did it end?", "When was it signed?"] in embedder.calls


async def test_the_same_question_in_the_same_context_is_served():
    embedder = TemplateEmbedder(alike={"When was it signed ?": "When was it signed?"})
    cache = await cache_with(embedder, ["When was it signed?"])
    look = await lookup(cache, "When was it signed ?")
    assert look.hit is not None and look.hit.layer == "L3" and look.hit.key == "k0"


async def test_a_lookup_compares_the_parts_of_at_most_two_candidates():
    embedder = TemplateEmbedder()
    cache = await cache_with(embedder, ["Question one?", "Question two?", "Question three?", "Question four?"])
    embedder.calls.clear()
    look = await lookup(cache, "Another question?")
    assert look.hit is None and look.probe.verdict == "shared-context"
    assert len(embedder.calls) == 1 + SemanticStage.MAX_PART_CHECKS  # the query, then one pair per check
