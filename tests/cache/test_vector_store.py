"""RedisVectorStore against a real redis-server: rebuild, follow, outage and recovery."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
import redis.asyncio as aioredis

from cache.layer import LayerError
from tests.conftest import eventually_async
from cache.semantic_index import SemanticIndex
from cache.vector_store import CorruptVector, RedisVectorStore, pack, unpack

DIM = 16
from tests.cache.conftest import CLIENT_TIMEOUT as TIMEOUT


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    await eventually_async(cond, within)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def store(client: aioredis.Redis) -> RedisVectorStore:
    return RedisVectorStore(client, timeout=TIMEOUT, backoff_min=0.05, backoff_max=0.3)


def test_pack_roundtrip():
    v = np.arange(DIM, dtype=np.float32)
    p, w = unpack(pack("tenant/ns/é", v))
    assert p == "tenant/ns/é"
    np.testing.assert_array_equal(w, v)
    for bad in (b"", b"\x02" + pack("p", v)[1:], pack("p", v)[:-1], pack("p", v)[:7]):
        with pytest.raises(CorruptVector):
            unpack(bad)


async def test_rebuild_then_follow_adds_removes_and_other_events(clients, rng):
    a_index, a = SemanticIndex(DIM), store(clients())
    vs = {f"k{i}": unit(rng) for i in range(4)}
    for i, (key, v) in enumerate(list(vs.items())[:3]):
        part = "p0" if i < 2 else "p1"
        await a_index.add(key, v, part)
        await a.publish_add(key, v, part)

    b_index = SemanticIndex(DIM)
    assert await store(clients()).rebuild(b_index) == 3
    assert b_index.sizes() == {"p0": 2, "p1": 1}
    assert (await b_index.search(vs["k1"], "p0", 1))[0][0] == "k1"

    c_index, c = SemanticIndex(DIM), store(clients())
    events: list[tuple[str, dict]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(c.follow(c_index, stop, on_event=lambda op, f: events.append((op, f))))
    try:
        await until(lambda: len(c_index) == 3)  # follow rebuilds first
        await a.publish_add("k3", vs["k3"], "p1")
        await until(lambda: "k3" in c_index)
        np.testing.assert_allclose(c_index.get_vector("k3"), vs["k3"])
        assert await a.publish_remove("k0") is True
        await until(lambda: "k0" not in c_index)
        assert await a.publish_remove("k0") is False
        await a.publish("purge", {"key": "some-l1-key"})
        await until(lambda: bool(events))
        assert events == [("purge", {"key": "some-l1-key"})]
        assert c_index.sizes() == {"p0": 1, "p1": 2}
    finally:
        stop.set()
        t0 = time.monotonic()
        await asyncio.wait_for(task, 3)
    assert time.monotonic() - t0 < 2  # XREAD blocks at most block_ms
    assert c.stats["errors"] == 0 and c.stats["applied"] >= 2


async def test_rebuild_drops_keys_redis_lacks_and_skips_malformed(clients, rng):
    client = clients()
    s = store(client)
    await s.publish_add("kept", unit(rng), "p")
    await client.hset(s.hash_key, "junk", b"\x09nonsense")
    await client.hset(s.hash_key, "wrong-dim", pack("p", np.ones(DIM + 1, np.float32)))
    index = SemanticIndex(DIM)
    await index.add("local-only", unit(rng), "q")
    assert await s.rebuild(index) == 1
    assert index.keys() == ["kept"] and index.partitions() == ["p"]
    assert s.stats["malformed"] == 2


async def test_outage_publish_fails_fast_and_follow_recovers(clients, redis_proc, rng):
    a = store(clients())
    c_index, c = SemanticIndex(DIM), store(clients())
    await a.publish_add("before", unit(rng), "p")
    stop = asyncio.Event()
    task = asyncio.create_task(c.follow(c_index, stop))
    try:
        await until(lambda: "before" in c_index)

        redis_proc.kill()
        t0 = time.monotonic()
        with pytest.raises(LayerError):
            await a.publish_add("during", unit(rng), "p")
        with pytest.raises(LayerError):
            await a.publish_remove("before")
        assert time.monotonic() - t0 < 2 * TIMEOUT + 0.5
        await until(lambda: c.stats["errors"] > 0)

        await asyncio.to_thread(redis_proc.start)  # a fresh, empty server on the same port
        async def published() -> bool:  # the first call may still meet a dead pooled connection
            try:
                await a.publish_add("after", unit(rng), "p")
                return True
            except LayerError:
                return False

        await eventually_async(published, within=5, what="a publish after the restart")
        await until(lambda: "after" in c_index)
        # the follower rebuilt from the (now empty) server: what Redis lost, L3 drops
        assert "before" not in c_index and c.stats["rebuilds"] >= 2
    finally:
        if redis_proc.proc is None or redis_proc.proc.poll() is not None:
            redis_proc.start()
        stop.set()
        await asyncio.wait_for(task, 3)


async def test_publish_has_its_own_deadline_when_redis_hangs(redis_url, redis_proc, rng):
    import os
    import signal

    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    s = RedisVectorStore(client, timeout=0.3)
    await s.publish_add("warm", unit(rng), "p")  # a pooled connection exists
    os.kill(redis_proc.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        t0 = time.monotonic()
        with pytest.raises(LayerError):
            await s.publish_add("hung", unit(rng), "p")
        assert time.monotonic() - t0 < 1.0  # the store's deadline, not the 5 s socket timeout
    finally:
        os.kill(redis_proc.proc.pid, signal.SIGCONT)
    await s.publish_add("after", unit(rng), "p")
    # a deadline means "outcome unknown": the MULTI already sent may still have run
    assert {b"warm", b"after"} <= set(await client.hkeys(s.hash_key))
    await client.aclose()


async def test_vectors_under_the_keys_older_versions_wrote_are_adopted(clients, rng):
    """Before Cluster support the keys were not hash-tagged: `sc:vec` and `sc:l3log`."""
    raw = clients()
    v = unit(rng)
    await raw.hset("sc:vec", "old-key", pack("p", v))
    await raw.xadd("sc:l3log", {"op": "add", "key": "old-key", "partition": "p", "vec": v.tobytes()})
    index = SemanticIndex(DIM)
    s = store(clients())
    assert await s.rebuild(index) == 1 and "old-key" in index
    assert not await raw.exists("sc:vec", "sc:l3log") and await raw.exists(s.hash_key, s.stream_key) == 2
