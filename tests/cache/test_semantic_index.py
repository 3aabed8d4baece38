"""SemanticIndex against real FAISS: partitions, replacement, Flat -> HNSW, tombstones, threads."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

# pytest puts tests/ on sys.path, where tests/cache/ would shadow the `cache` package as a
# namespace package; a regular package wins once the repository root is on the path.
if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)

from cache.semantic_index import SemanticIndex, VectorIndex

DIM = 32


def unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    x = rng.standard_normal((n or 1, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x if n is not None else x[0]


def near(rng: np.random.Generator, v: np.ndarray, eps: float = 0.05) -> np.ndarray:
    w = v + eps * rng.standard_normal(v.shape).astype(np.float32)
    return (w / np.linalg.norm(w)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


async def test_add_search_remove(rng):
    index = SemanticIndex(DIM)
    assert isinstance(index, VectorIndex)
    vs = unit(rng, 5)
    for i, v in enumerate(vs):
        await index.add(f"k{i}", v, "p")
    assert len(index) == 5 and index.sizes() == {"p": 5}

    hits = await index.search(near(rng, vs[2]), "p", 3)
    assert hits[0][0] == "k2" and 0.9 < hits[0][1] <= 1.0001
    assert len(hits) == 3 and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(await index.search(vs[0], "p", 10)) == 5  # k larger than the partition

    assert await index.remove("k2") is True
    assert await index.remove("k2") is False
    assert "k2" not in {k for k, _ in await index.search(vs[2], "p", 5)}
    assert index.get_vector("k2") is None
    np.testing.assert_allclose(index.get_vector("k1"), vs[1])
    assert await index.search(vs[0], "nope", 4) == []
    with pytest.raises(ValueError):
        await index.search(np.zeros(DIM + 1, np.float32), "p", 1)


async def test_partition_isolation(rng):
    index = SemanticIndex(DIM)
    v = unit(rng)
    await index.add("a-far", unit(rng), "tenant-a")
    await index.add("b-same", v, "tenant-b")  # identical to the query, but another partition
    hits = await index.search(v, "tenant-a", 4)
    assert [k for k, _ in hits] == ["a-far"]
    assert [k for k, _ in await index.search(v, "tenant-b", 4)] == ["b-same"]
    assert sorted(index.partitions()) == ["tenant-a", "tenant-b"]
    assert index.keys_in("tenant-b") == ["b-same"]


async def test_replace_on_readd_and_empty_partitions_dropped(rng):
    index = SemanticIndex(DIM)
    old, new = unit(rng, 2)
    await index.add("k", old, "p")
    await index.add("other", unit(rng), "p")
    await index.add("k", new, "p")
    assert len(index) == 2 and index.sizes() == {"p": 2}
    np.testing.assert_allclose(index.get_vector("k"), new)
    hits = dict(await index.search(new, "p", 4))
    assert hits["k"] == pytest.approx(1.0, abs=1e-5)

    await index.add("k", new, "q")  # moving a key to another partition
    assert index.partition_of("k") == "q" and index.keys_in("p") == ["other"]
    assert "k" not in dict(await index.search(new, "p", 4))

    await index.remove("k")
    assert "q" not in index.partitions()  # empty partition dropped
    await index.remove("other")
    assert index.partitions() == [] and len(index) == 0


async def test_flat_to_hnsw_keeps_results_and_honours_tombstones(rng):
    index = SemanticIndex(DIM, flat_max=64, tombstone_fraction=0.25, inline_max=16)
    vs = unit(rng, 150)
    for i in range(40):  # one by one, then a batch crossing the threshold
        await index.add(f"k{i}", vs[i], "p")
    assert index.kind("p") == "flat"
    await index.add_many([f"k{i}" for i in range(40, 150)], vs[40:], "p")
    assert index.kind("p") == "hnsw" and index.rebuilds == 1 and len(index) == 150

    for i in range(0, 150, 7):
        hits = await index.search(near(rng, vs[i], 0.02), "p", 4)
        assert hits[0][0] == f"k{i}"

    # identical re-adds (e.g. our own events echoed by the Redis stream) leave no tombstone
    await index.add_many([f"k{i}" for i in range(10)], vs[:10], "p")
    assert index.tombstones("p") == 0

    removed = {f"k{i}" for i in range(0, 30, 2)}  # 15 tombstones, below 25% of 150
    assert await index.remove_many(removed) == 15
    assert index.kind("p") == "hnsw" and index.tombstones("p") == 15
    for i in range(0, 30):
        keys = [k for k, _ in await index.search(vs[i], "p", 8)]
        assert not removed & set(keys)
        if f"k{i}" not in removed:
            assert keys[0] == f"k{i}"

    await index.add("k1", vs[149], "p")  # replace in HNSW: the old id becomes a tombstone
    assert index.tombstones("p") == 16
    np.testing.assert_allclose(index.get_vector("k1"), vs[149])

    # crossing the tombstone fraction compacts the partition (still HNSW: 104 live > 32)
    more = {f"k{i}" for i in range(30, 60)}
    await index.remove_many(more)
    assert index.rebuilds == 2 and index.tombstones("p") == 0 and index.kind("p") == "hnsw"
    assert len(index) == 150 - 45
    for i in range(60, 150, 9):
        assert (await index.search(vs[i], "p", 1))[0][0] == f"k{i}"

    # shrinking below flat_max / 2 compacts back to Flat
    await index.remove_many([f"k{i}" for i in range(60, 140)])
    assert index.kind("p") == "flat" and index.sizes() == {"p": 25}
    assert (await index.search(vs[145], "p", 1))[0][0] == "k145"


async def test_search_all_partitions(rng):
    index = SemanticIndex(DIM, flat_max=20)
    v = unit(rng)
    await index.add("flat-close", near(rng, v, 0.02), "small")
    await index.add("flat-far", -v, "small")
    await index.add_many([f"h{i}" for i in range(30)], unit(rng, 30), "big")  # HNSW
    await index.add("hnsw-close", near(rng, v, 0.02), "big")
    assert index.kind("big") == "hnsw"
    hits = await asyncio.to_thread(index.search_all_partitions, v, 0.9)
    assert {(k, p) for k, p, _ in hits} == {("flat-close", "small"), ("hnsw-close", "big")}
    assert all(s >= 0.9 for _, _, s in hits)
    everything = index.search_all_partitions(v, -1.0)
    assert len(everything) == 33


async def test_concurrent_adds_searches_removes_across_a_rebuild(rng):
    # small thresholds so that worker threads, inline calls and a Flat -> HNSW rebuild mix
    index = SemanticIndex(DIM, flat_max=150, inline_max=32, tombstone_fraction=0.3)
    parts = ["p0", "p1", "p2"]
    vs = unit(rng, 600)
    expected = {f"k{i}": (parts[i % 3], vs[i]) for i in range(600)}

    async def add(i: int) -> None:
        await index.add(f"k{i}", vs[i], parts[i % 3])

    def allowed(key: str) -> set[str]:  # k0..k89 are also moved to p0 by concurrent batches
        i = int(key[1:])
        return {parts[i % 3], "p0"} if i < 90 else {parts[i % 3]}

    async def search(i: int) -> None:
        for key, _ in await index.search(vs[i], parts[i % 3], 4):
            assert parts[i % 3] in allowed(key)  # never another partition's key

    ops = [add(i) for i in range(600)] + [search(i) for i in range(0, 600, 3)]
    ops += [index.add_many([f"k{i}" for i in range(j, j + 30)], vs[j:j + 30], "p0") for j in range(0, 90, 30)]
    await asyncio.wait_for(asyncio.gather(*ops), 60)
    for j in range(0, 90):  # the batches moved these keys into p0
        expected[f"k{j}"] = ("p0", vs[j])
    removed = [f"k{i}" for i in range(0, 600, 5)]
    await asyncio.wait_for(asyncio.gather(*(index.remove(k) for k in removed),
                                          *(search(i) for i in range(1, 600, 5))), 60)
    for k in removed:
        del expected[k]

    assert len(index) == len(expected)
    want: dict[str, int] = {}
    for p, _ in expected.values():
        want[p] = want.get(p, 0) + 1
    assert index.sizes() == want
    assert index.kind("p0") == "hnsw"
    for key, (p, v) in list(expected.items())[::7]:
        np.testing.assert_allclose(index.get_vector(key), v)
        assert (await index.search(v, p, 1))[0][0] == key


async def test_memory_bytes_counts_vectors_and_graph(rng):
    index = SemanticIndex(DIM, flat_max=20)
    await index.add_many([f"f{i}" for i in range(10)], unit(rng, 10), "flat")
    await index.add_many([f"h{i}" for i in range(40)], unit(rng, 40), "hnsw")
    flat, hnsw = index.memory_bytes("flat"), index.memory_bytes("hnsw")
    assert flat >= 10 * DIM * 4 and hnsw > 40 * DIM * 4 * 1.2  # the graph costs extra
    assert index.memory_bytes() == flat + hnsw and index.memory_bytes("nope") == 0
