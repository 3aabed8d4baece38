"""SemanticIndex against real FAISS: partitions, replacement, Flat -> HNSW -> IVF, tombstones,
IVF removals and retrains, rebuilds racing mutations, threads."""
from __future__ import annotations

import asyncio
import sys
import threading
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
    index = SemanticIndex(DIM, flat_max=64, hnsw_max=10_000, tombstone_fraction=0.25, inline_max=16)
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
    index = SemanticIndex(DIM, flat_max=20, hnsw_max=50)
    v = unit(rng)
    await index.add("flat-close", near(rng, v, 0.02), "small")
    await index.add("flat-far", -v, "small")
    await index.add_many([f"h{i}" for i in range(30)], unit(rng, 30), "big")  # HNSW
    await index.add("hnsw-close", near(rng, v, 0.02), "big")
    await index.add_many([f"i{i}" for i in range(60)], unit(rng, 60), "huge")  # IVF
    await index.add("ivf-close", near(rng, v, 0.02), "huge")
    assert index.kind("big") == "hnsw" and index.kind("huge") == "ivf"
    hits = await asyncio.to_thread(index.search_all_partitions, v, 0.9)
    assert {(k, p) for k, p, _ in hits} == {("flat-close", "small"), ("hnsw-close", "big"), ("ivf-close", "huge")}
    assert all(s >= 0.9 for _, _, s in hits)
    everything = index.search_all_partitions(v, -1.0)
    assert len(everything) == 33 + 61  # IVF probes every list here: exact


@pytest.mark.parametrize("tier", ["hnsw", "ivf"])
async def test_concurrent_adds_searches_removes_across_a_rebuild(rng, tier):
    # small thresholds so that worker threads, inline calls and a Flat -> HNSW/IVF rebuild mix
    index = SemanticIndex(DIM, flat_max=150, hnsw_max=10_000 if tier == "hnsw" else None, inline_max=32,
                          tombstone_fraction=0.3)
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
    assert index.kind("p0") == tier
    for key, (p, v) in list(expected.items())[::7]:
        np.testing.assert_allclose(index.get_vector(key), v)
        assert (await index.search(v, p, 1))[0][0] == key


async def test_memory_bytes_counts_vectors_and_graph(rng):
    index = SemanticIndex(DIM, flat_max=20, hnsw_max=50)
    await index.add_many([f"f{i}" for i in range(10)], unit(rng, 10), "flat")
    await index.add_many([f"h{i}" for i in range(40)], unit(rng, 40), "hnsw")
    await index.add_many([f"i{i}" for i in range(80)], unit(rng, 80), "ivf")
    assert [index.kind(p) for p in ("flat", "hnsw", "ivf")] == ["flat", "hnsw", "ivf"]
    flat, hnsw, ivf = index.memory_bytes("flat"), index.memory_bytes("hnsw"), index.memory_bytes("ivf")
    assert flat >= 10 * DIM * 4 and hnsw > 40 * DIM * 4 * 1.2  # the graph costs extra
    assert ivf >= 80 * DIM * 4 + index.stats("ivf")["nlist"] * DIM * 4  # vectors and centroids
    assert index.memory_bytes() == flat + hnsw + ivf and index.memory_bytes("nope") == 0


# -- the IVF tier ------------------------------------------------------------------------------
def ivf_index(**kw) -> SemanticIndex:
    """IVF past 2,000 vectors; at 32 dims and a few thousand vectors nlist stays small."""
    return SemanticIndex(DIM, **{"flat_max": 2000, "ivf_nprobe": 8, **kw})


async def test_ivf_tier_results_removals_and_readd(rng):
    index = ivf_index()
    vs = unit(rng, 3000)
    for s in range(0, 3000, 500):
        await index.add_many([f"k{i}" for i in range(s, s + 500)], vs[s:s + 500], "p")
    stats = index.stats("p")
    assert stats["kind"] == "ivf" and index.rebuilds == 1 and stats["trained"] == 2500
    assert stats["nlist"] == index.ivf_nlist(2500) == 64 and stats["nprobe"] == 8  # 2500 // 39 caps 4 sqrt(2500)
    assert stats["vectors"] == 3000 and len(index) == 3000

    # a stored vector sits in the list of its nearest centroid, which is always probed
    for i in range(0, 3000, 37):
        hits = await index.search(vs[i], "p", 4)
        assert hits[0][0] == f"k{i}" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert len(hits) == 4 and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    # near queries: approximate, but at 8 of 64 lists almost always right
    found = [(await index.search(near(rng, vs[i]), "p", 1))[0][0] == f"k{i}" for i in range(0, 3000, 15)]
    assert np.mean(found) >= 0.9

    # removals really remove (no tombstones), and never come back
    removed = {f"k{i}" for i in range(0, 3000, 3)}
    assert await index.remove_many(removed) == 1000
    assert index.stats("p")["vectors"] == 2000 and index.tombstones("p") == 0 and index.kind("p") == "ivf"
    for i in range(0, 60):
        keys = [k for k, _ in await index.search(vs[i], "p", 8)]
        assert not removed & set(keys)
        if f"k{i}" not in removed:
            assert keys[0] == f"k{i}"
    assert index.get_vector("k0") is None
    np.testing.assert_allclose(index.get_vector("k1"), vs[1])

    # re-adding a key replaces its vector; an identical re-add changes nothing
    new = unit(rng)
    await index.add("k1", new, "p")
    assert index.stats("p")["vectors"] == 2000 and len(index) == 2000
    np.testing.assert_allclose(index.get_vector("k1"), new)
    assert (await index.search(new, "p", 1))[0][0] == "k1"
    assert "k1" not in [k for k, _ in await index.search(vs[1], "p", 4)]
    assert await index.add_many(["k1", "k2"], np.stack([new, vs[2]]), "p") == 0
    assert index.stats("p")["vectors"] == 2000 and index.rebuilds == 1

    # moving a key to another partition takes it out of this one
    await index.add("k2", vs[2], "q")
    assert index.partition_of("k2") == "q" and index.stats("p")["vectors"] == 1999
    assert "k2" not in [k for k, _ in await index.search(vs[2], "p", 4)]


async def test_ivf_partition_isolation(rng):
    index = ivf_index(flat_max=300)
    a, b = unit(rng, 400), unit(rng, 400)
    await index.add_many([f"a{i}" for i in range(400)], a, "tenant-a")
    await index.add_many([f"b{i}" for i in range(400)], b, "tenant-b")
    await index.add("c0", a[0], "tenant-c")  # a Flat partition holding a copy of a0
    assert {index.kind(p) for p in ("tenant-a", "tenant-b")} == {"ivf"} and index.kind("tenant-c") == "flat"
    for i in range(0, 400, 20):
        assert all(k.startswith("a") for k, _ in await index.search(b[i], "tenant-a", 8))
        assert all(k.startswith("b") for k, _ in await index.search(a[i], "tenant-b", 8))
        assert (await index.search(b[i], "tenant-b", 1))[0][0] == f"b{i}"
    assert [k for k, _ in await index.search(a[0], "tenant-c", 4)] == ["c0"]
    assert (await index.search(a[0], "tenant-a", 1))[0][0] == "a0"


async def test_ivf_retrains_when_grown_or_shrunk_and_keeps_results(rng):
    index = ivf_index(flat_max=400, ivf_regrow=4.0)
    vs = unit(rng, 2200)
    await index.add_many([f"k{i}" for i in range(500)], vs[:500], "p")
    assert index.stats("p")["trained"] == 500 and index.stats("p")["nlist"] == 12  # 500 // 39
    for s in range(500, 2000, 250):  # 2000 <= 4 x 500: the same quantizer
        await index.add_many([f"k{i}" for i in range(s, s + 250)], vs[s:s + 250], "p")
    assert index.rebuilds == 1
    await index.add_many([f"k{i}" for i in range(2000, 2200)], vs[2000:], "p")  # 2200 > 4 x 500
    assert index.rebuilds == 2 and index.kind("p") == "ivf"
    assert index.stats("p")["trained"] == 2200 and index.stats("p")["nlist"] == 56  # 2200 // 39
    assert list(index.rebuild_history)[-1] == {**list(index.rebuild_history)[-1], "from": "ivf", "to": "ivf",
                                               "vectors": 2200, "nlist": 56}
    for i in range(0, 2200, 23):
        assert (await index.search(vs[i], "p", 1))[0][0] == f"k{i}"

    # shrinking by 4x retrains too; at half of flat_max it goes back to Flat (hysteresis)
    await index.remove_many([f"k{i}" for i in range(1700)])  # 500 live < 2200 / 4
    assert index.rebuilds == 3 and index.stats("p") == {**index.stats("p"), "kind": "ivf", "trained": 500}
    await index.remove_many([f"k{i}" for i in range(1700, 1850)])  # 350 live: not yet
    assert index.kind("p") == "ivf"
    await index.remove_many([f"k{i}" for i in range(1850, 2000)])  # 200 live <= 400 / 2
    assert index.kind("p") == "flat" and index.rebuilds == 4 and index.sizes() == {"p": 200}
    for i in range(2000, 2200, 11):
        assert (await index.search(vs[i], "p", 1))[0][0] == f"k{i}"


async def test_ivf_rebuild_replays_mutations_made_while_it_builds(rng):
    """The Flat -> IVF build runs off the lock: searches, adds, removes and replacements
    that happen meanwhile go to the old index and are replayed into the new one (the
    1,200-vector batch also takes the replay-off-the-lock path)."""
    index = ivf_index(flat_max=300)
    vs = unit(rng, 2000)
    await index.add_many([f"k{i}" for i in range(300)], vs[:300], "p")
    entered, release = threading.Event(), threading.Event()
    build = index._new_ivf

    def slow_build(chunks):
        entered.set()
        assert release.wait(10)
        return build(chunks)

    index._new_ivf = slow_build
    crossing = asyncio.create_task(index.add_many([f"k{i}" for i in range(300, 400)], vs[300:400], "p"))
    assert await asyncio.to_thread(entered.wait, 10)
    assert index.kind("p") == "flat"  # still the old index, and usable
    assert (await index.search(vs[350], "p", 1))[0][0] == "k350"
    await index.add_many([f"k{i}" for i in range(400, 1600)], vs[400:1600], "p")
    await index.remove_many([f"k{i}" for i in range(0, 100)] + [f"k{i}" for i in range(1500, 1600)])
    await index.add("k100", vs[1999], "p")  # replace
    await index.add("elsewhere", vs[1998], "q")
    release.set()
    await crossing
    assert index.kind("p") == "ivf" and index.rebuilds == 1 and index.stats("p")["trained"] == 400
    assert index.sizes() == {"p": 1400, "q": 1} and index.stats("p")["vectors"] == 1400
    for i in range(0, 1600, 13):
        top = [k for k, _ in await index.search(vs[i], "p", 1)]
        assert top == [f"k{i}"] if 100 < i < 1500 else f"k{i}" not in top
    assert (await index.search(vs[1999], "p", 1))[0][0] == "k100"
    np.testing.assert_allclose(index.get_vector("k100"), vs[1999])
    assert index.get_vector("k0") is None and index.get_vector("k1500") is None


def test_tier_for_size_has_hysteresis():
    index = SemanticIndex(DIM, flat_max=100, hnsw_max=1000)
    assert [index._kind_for(n, "flat") for n in (100, 101, 1000, 1001)] == ["flat", "hnsw", "hnsw", "ivf"]
    assert [index._kind_for(n, "hnsw") for n in (51, 50, 1001)] == ["hnsw", "flat", "ivf"]
    assert [index._kind_for(n, "ivf") for n in (501, 500, 51, 50)] == ["ivf", "hnsw", "hnsw", "flat"]
    no_hnsw = SemanticIndex(DIM, flat_max=100)
    assert [no_hnsw._kind_for(n, "flat") for n in (100, 101)] == ["flat", "ivf"]
    assert [no_hnsw._kind_for(n, "ivf") for n in (100, 51, 50)] == ["ivf", "ivf", "flat"]
    assert [no_hnsw.ivf_nlist(n) for n in (20, 1000, 100_000, 1_000_000)] == [1, 25, 1265, 2564]
    with pytest.raises(ValueError):
        SemanticIndex(DIM, flat_max=100, hnsw_max=50)


async def test_ivf_retrain_copies_lists_while_mutations_interleave(rng, monkeypatch):
    """An IVF retrain copies the old index a list at a time (here: one list a lock hold) and
    the partition is mutated between every two copies: adds (ids above the cut, left to the
    log), removals of lists already copied (replayed) and not yet copied (never copied)."""
    import cache.semantic_index as si

    monkeypatch.setattr(si, "_COPY_UNDER_LOCK", 1)
    index = ivf_index()
    vs = unit(rng, 12_000)
    await index.add_many([f"k{i}" for i in range(2500)], vs[:2500], "p")
    for s in range(2500, 10_000, 2500):
        await index.add_many([f"k{i}" for i in range(s, s + 2500)], vs[s:s + 2500], "p")
    assert index.stats("p")["trained"] == 2500 and index.rebuilds == 1
    part = index._parts["p"]
    expected = {f"k{i}": vs[i] for i in range(10_000)}
    script = []
    for j in range(200):
        old = f"k{rng.integers(0, 10_000)}"
        script.append(("add", f"n{j}", vs[10_000 + j]) if j % 3 == 0 else
                      ("remove", old, None) if j % 3 == 1 else ("add", old, vs[10_500 + j]))
    done = []

    class HookLock:
        """The partition's lock, running the next scripted mutation after each release
        while a rebuild is under way (in the rebuilding thread itself: deterministic)."""

        def __init__(self) -> None:
            self._lock, self._busy = threading.Lock(), False

        def __enter__(self):
            self._lock.acquire()

        def __exit__(self, *exc) -> None:
            self._lock.release()
            if part.log is None or self._busy or len(done) == len(script):
                return
            self._busy = True
            try:
                op, key, v = script[len(done)]
                if op == "add":
                    index._add_blocking("p", [key], v[None, :])
                    expected[key] = v
                elif expected.pop(key, None) is not None:
                    index._remove_blocking(index._detach([key]))
                done.append(op)
            finally:
                self._busy = False

    part.lock = HookLock()
    await index.add_many([f"k{i}" for i in range(10_000, 10_100)], vs[10_000:10_100] * -1, "p")  # past 4 x 2500
    expected.update({f"k{i}": -vs[i] for i in range(10_000, 10_100)})
    assert index.rebuilds == 2 and list(index.rebuild_history)[-1]["from"] == "ivf"
    assert len(done) >= index.ivf_nlist(2500)  # at least one mutation between two lists
    assert len(index) == len(expected) == index.stats("p")["vectors"]
    for key, v in expected.items():
        np.testing.assert_allclose(index.get_vector(key), v)
    for key, v in list(expected.items())[::17]:
        assert (await index.search(v, "p", 1))[0][0] == key
    gone = {f"k{i}" for i in range(10_000)} - set(expected)
    assert gone and all(index.get_vector(k) is None for k in gone)
