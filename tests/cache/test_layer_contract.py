"""One contract suite for the exact layers, run over L1 (memory) and L2 (real Redis),
the latter reading both through redis-py's pool and through the pipelined connection."""
from __future__ import annotations

import time

import pytest

from cache.breaker import CircuitBreaker
from cache.entry import MISS, Entry, EntryMeta
from cache.layer import LayerError
from cache.memory_layer import MemoryLayer
from cache.redis_client import make_client
from cache.redis_layer import RedisLayer
from cache.redis_pipe import RedisPipe


def entry(text: str = "hello", created_at: float | None = None, ttl: float = 60, grace: float = 10) -> Entry:
    body = ('{"choices":[{"index":0,"message":{"role":"assistant","content":"%s"},"finish_reason":"stop"}]}'
            % text).encode()
    return Entry(body=body, frames=(b"data: {}\n\n",), usage_frame=None,
                 created_at=time.time() if created_at is None else created_at, ttl=ttl, grace=grace,
                 meta=EntryMeta(tenant="t", namespace="", route="chat", model="m", partition="p",
                                semantic_text=text, tags=("a", "b")))


def redis_layer(url: str, timeout_s: float, *, pipe: bool, breaker: CircuitBreaker | None = None,
                clock=time.time) -> RedisLayer:
    return RedisLayer(make_client(url, timeout_s), prefix="t:", timeout_s=timeout_s,
                      breaker=breaker or CircuitBreaker(3, 1.0, time.monotonic), clock=clock,
                      pipe=RedisPipe.from_url(url, connect_timeout_s=timeout_s) if pipe else None)


@pytest.fixture(params=["L1", "L2", "L2-pipe", "L2-sentinel", "L2-cluster"])
async def layer(request):
    if request.param == "L1":
        lay = MemoryLayer(1 << 20, time.time)
    elif request.param == "L2-sentinel":  # the master found through Redis Sentinel
        import redis

        group = request.getfixturevalue("sentinel_group")
        with redis.Redis(port=group.master_port()) as master:
            master.flushall()
        lay = redis_layer(group.url, 0.5, pipe=False)
    elif request.param == "L2-cluster":  # keys spread over three masters
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        lay = redis_layer(cluster.url, 0.5, pipe=False)
    else:
        lay = redis_layer(request.getfixturevalue("redis_url"), 0.5, pipe=request.param == "L2-pipe")
    yield lay
    await lay.aclose()


async def test_get_of_an_absent_key_is_a_falsy_miss_not_none(layer):
    got = await layer.get("nope")
    assert got is MISS and not got and got is not None


async def test_set_then_get_round_trips_every_field(layer):
    e = entry()
    await layer.set("k1", e)
    got = await layer.get("k1")
    assert got == e
    assert got.meta.tags == ("a", "b") and got.frames == e.frames


async def test_set_replaces(layer):
    await layer.set("k", entry("one"))
    await layer.set("k", entry("two"))
    assert b"two" in (await layer.get("k")).body


async def test_delete_reports_whether_it_removed(layer):
    await layer.set("k", entry())
    assert await layer.delete("k") is True
    assert await layer.delete("k") is False
    assert await layer.get("k") is MISS


async def test_scan_lists_keys(layer):
    for i in range(5):
        await layer.set(f"k{i}", entry(str(i)))
    assert sorted([k async for k in layer.scan()]) == [f"k{i}" for i in range(5)]
    assert sorted([k async for k in layer.scan(partition="p")]) == [f"k{i}" for i in range(5)]
    assert [k async for k in layer.scan(partition="other")] == []


async def test_entry_past_its_grace_is_not_stored_or_is_dropped(layer):
    await layer.set("old", entry(created_at=time.time() - 1000, ttl=10, grace=10))
    assert await layer.get("old") is MISS


async def test_l1_is_bounded_in_bytes():
    lay = MemoryLayer(5000, time.time)
    for i in range(100):
        await lay.set(f"k{i}", entry("x" * 100))
    assert lay.bytes <= 5000 and 0 < len(lay) < 100
    assert await lay.get("k99")  # most recent survives


async def test_l1_expiry_follows_the_injected_clock(clock):
    lay = MemoryLayer(1 << 20, clock)
    await lay.set("k", entry(created_at=clock.now, ttl=10, grace=5))
    clock.advance(14.9)
    assert await lay.get("k")
    clock.advance(0.2)
    assert await lay.get("k") is MISS


async def test_redis_entry_carries_a_redis_expiry(redis_url):
    lay = RedisLayer(make_client(redis_url, 0.5), prefix="t:", timeout_s=0.5,
                     breaker=CircuitBreaker(3, 1.0, time.monotonic))
    await lay.set("k", entry(ttl=100, grace=20))
    pttl = await lay.client.pttl("t:e:k")
    assert 100_000 < pttl <= 120_000
    await lay.aclose()


@pytest.mark.parametrize("pipe", [False, True], ids=["pool", "pipe"])
async def test_redis_down_raises_layer_error_within_the_deadline_then_fails_fast(redis_proc, redis_url, pipe):
    lay = redis_layer(redis_url, 0.3, pipe=pipe, breaker=CircuitBreaker(2, 30.0, time.monotonic))
    await lay.set("k", entry())
    redis_proc.kill()
    try:
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(LayerError):
                await lay.get("k")
            assert time.monotonic() - t0 < 2.0
        assert lay.breaker.is_open
        with pytest.raises(LayerError, match="circuit open"):
            await lay.get("k")
    finally:
        redis_proc.start()
        await lay.aclose()


@pytest.mark.parametrize("pipe", [False, True], ids=["pool", "pipe"])
async def test_corrupt_bytes_in_redis_are_an_error_not_a_miss(redis_url, pipe):
    lay = redis_layer(redis_url, 0.5, pipe=pipe)
    await lay.client.set("t:e:bad", b"\x00garbage")
    with pytest.raises(LayerError, match="corrupt"):
        await lay.get("bad")
    await lay.aclose()
