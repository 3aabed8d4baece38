"""Redis Cluster: the URL, and everything the proxy keeps in Redis working across three real
masters (redis-server processes in cluster mode, the slots split between them). The exact
layer's contract suite also runs over the cluster (tests/cache/test_layer_contract.py)."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis

from cache.ban_bus import BanBus
from cache.breaker import CircuitBreaker
from cache.evidence_store import RedisEvidenceStore
from cache.layer import LayerError
from cache.redis_client import ClusterURL, RedisURLError, make_client
from cache.redis_layer import RedisLayer
from cache.redis_lock import RedisLock
from cache.redis_pipe import RedisPipe
from cache.semantic_index import SemanticIndex
from cache.vector_store import RedisVectorStore
from policies.invalidation import Ban
from proxy.settings import ConfigError, load_settings
from tests.cache.test_layer_contract import entry
from tests.conftest import ClusterGroup, eventually_async, running

TIMEOUT = 0.5


def test_the_url_names_seed_nodes_and_credentials():
    spec = ClusterURL.parse("redis+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001")
    assert spec.nodes == (("10.0.0.1", 7000), ("::1", 7001))
    assert (spec.username, spec.password) == ("app", "s@cret")
    assert ClusterURL.parse("redis+cluster://h:1/0") == ClusterURL(nodes=(("h", 1),))
    assert load_settings(None, {"redis": {"url": "redis+cluster://h:1,h:2"}}).redis.url == "redis+cluster://h:1,h:2"
    assert not RedisPipe.supports("redis+cluster://h:1")  # the pipe speaks to one server only


@pytest.mark.parametrize("url", [
    "redis+cluster://", "redis+cluster://h", "redis+cluster://h:x", "redis+cluster://h:1/2",
    "redis+cluster://h:1?read_from_replicas=1",
])
def test_a_malformed_cluster_url_is_refused_at_start_with_the_field_named(url):
    with pytest.raises(RedisURLError):
        ClusterURL.parse(url)
    with pytest.raises(ConfigError, match="redis.url"):
        load_settings(None, {"redis": {"url": url}})


@pytest.fixture
def cluster(redis_cluster):
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
async def clients(cluster):
    """Factory of separate cluster clients, as separate proxy processes would have."""
    made = []

    def make():
        made.append(make_client(cluster.url, TIMEOUT))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


def keys_per_node(cluster) -> list[int]:
    out = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as r:
            out.append(r.dbsize())
    return out


async def test_entries_spread_over_the_masters_and_stats_count_them_all(cluster, clients):
    layer = RedisLayer(clients(), prefix="t:", timeout_s=TIMEOUT, breaker=CircuitBreaker(3, 1.0, time.monotonic))
    for i in range(30):
        await layer.set(f"k{i}", entry(str(i)))
    assert all(n > 0 for n in keys_per_node(cluster))  # really sharded, not one node
    assert await layer.exists_many([f"k{i}" for i in range(30)] + ["absent"]) == [True] * 30 + [False]
    stats = await layer.stats()
    assert stats["entries"] == 30 and stats["bytes"] > 0
    assert sorted([k async for k in layer.scan()]) == sorted(f"k{i}" for i in range(30))


async def test_vectors_are_shared_between_replicas_through_one_slot(cluster, clients):
    rng = np.random.default_rng(3)
    vecs = {f"k{i}": v / np.linalg.norm(v) for i, v in enumerate(rng.standard_normal((5, 16)).astype(np.float32))}
    a, b = RedisVectorStore(clients(), timeout=TIMEOUT), RedisVectorStore(clients(), timeout=TIMEOUT)
    for key, v in list(vecs.items())[:3]:
        await a.publish_add(key, v, "p")  # hash and stream in one MULTI: one slot
    b_index, stop = SemanticIndex(16), asyncio.Event()
    follower = asyncio.create_task(b.follow(b_index, stop))
    try:
        await eventually_async(lambda: len(b_index) == 3, 5, "the rebuild")
        for key, v in list(vecs.items())[3:]:
            await a.publish_add(key, v, "p")
        assert await a.publish_remove("k0")
        await eventually_async(lambda: len(b_index) == 4 and "k0" not in b_index, 5, "following the stream")
        assert (await b_index.search(vecs["k4"], "p", 1))[0][0] == "k4"
        assert b.stats["errors"] == 0
    finally:
        stop.set()
        await follower
    restarted = SemanticIndex(16)
    assert await RedisVectorStore(clients(), timeout=TIMEOUT).rebuild(restarted) == 4


async def test_a_ban_reaches_every_replica_and_is_acknowledged(cluster, clients):
    got: dict[str, list] = {"a": [], "b": []}

    def bus(name: str) -> BanBus:
        async def on_ban(ban: Ban) -> None:
            got[name].append(ban.id)

        async def on_purge(keys: list[str]) -> None:
            got[name].append(tuple(keys))

        return BanBus(clients(), prefix="sc:", timeout_s=TIMEOUT, ban_lifetime_s=60, on_ban=on_ban, on_purge=on_purge)

    a, b, stop = bus("a"), bus("b"), asyncio.Event()
    tasks = [asyncio.create_task(x.run(stop)) for x in (a, b)]
    try:
        await asyncio.wait_for(asyncio.gather(a.ready.wait(), b.ready.wait()), 5)
        # PUBLISH goes to the node that owns the channel's slot, where both subscribed: it counts both
        assert await a.publish_ban(Ban(id="ban1", issued_at=time.time(), tags=("x",))) == 2
        assert got == {"a": ["ban1"], "b": ["ban1"]}  # acknowledged before publish_ban returned
        assert await b.publish_purge(["k1", "k2"]) == 2
        assert got["a"][-1] == ("k1", "k2")
        c = bus("c")
        got["c"] = []
        assert await c.load_all() == 1 and got["c"] == ["ban1"]  # a replica starting later loads the stored bans
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_the_lock_and_the_evidence_store_work_on_the_cluster(cluster, clients):
    one, other = RedisLock(clients(), prefix="sc:", timeout_s=TIMEOUT), RedisLock(clients(), prefix="sc:", timeout_s=TIMEOUT)
    token = await one.acquire("q", 5.0)
    assert token and await other.acquire("q", 5.0) is None
    assert await other.release("q", "not-the-token") is False
    assert await one.release("q", token) is True
    assert await other.acquire("q", 5.0)

    ev = RedisEvidenceStore(clients(), prefix="sc:", timeout_s=TIMEOUT, breaker=CircuitBreaker(3, 1.0, time.monotonic))
    await ev.add("k", 0.93, True)
    await ev.add("k", 0.91, False)
    fresh = RedisEvidenceStore(clients(), prefix="sc:", timeout_s=TIMEOUT,
                               breaker=CircuitBreaker(3, 1.0, time.monotonic))  # another replica: no local copy
    seen = (await fresh.get_many(["k", "z"]))
    assert [o.correct for o in seen["k"].observations] == [True, False] and seen["z"].observations == ()


async def test_a_dead_master_is_an_error_within_the_deadline_and_its_return_is_picked_up(cluster, clients):
    layer = RedisLayer(clients(), prefix="t:", timeout_s=TIMEOUT, breaker=CircuitBreaker(100, 0.1, time.monotonic))
    keys = [f"k{i}" for i in range(30)]
    for k in keys:
        await layer.set(k, entry(k))
    dead = cluster.nodes[1]
    dead.kill()
    try:
        failed = 0
        for k in keys:
            t0 = time.monotonic()
            try:
                assert await layer.get(k)
            except LayerError:
                failed += 1
            assert time.monotonic() - t0 < 3 * TIMEOUT
        assert failed > 0  # the dead master's keys: an error (a miss for the proxy), never a hang
    finally:
        dead.start()  # same port and directory: it rejoins with its slots (not its data: no persistence)

    async def serving_again() -> bool:
        try:
            await layer.set("after", entry("after"))
            assert await layer.get("after")
            for k in keys:  # every master answers (the restarted one's keys are gone: misses)
                await layer.get(k)
            return True
        except LayerError:
            return False

    await eventually_async(serving_again, 20, "the cluster serving again", interval=0.2)


@pytest.fixture
def replicated_cluster():
    """Three masters with a replica each: its own cluster, since a failover changes who is master."""
    yield from running(ClusterGroup(replicas=1))


async def test_l2_follows_a_master_failing_over_to_its_replica(replicated_cluster):
    cluster = replicated_cluster
    layer = RedisLayer(make_client(cluster.url, TIMEOUT), prefix="t:", timeout_s=TIMEOUT,
                       breaker=CircuitBreaker(3, 0.2, time.monotonic))
    try:
        keys = [f"k{i}" for i in range(30)]
        for k in keys:
            await layer.set(k, entry(k))
        for node in cluster.nodes:  # every write has reached its master's replica
            with redis.Redis(port=node.port) as r:
                assert r.execute_command("WAIT", 1, 2000) == 1
        victim = cluster.nodes[0]
        moved = [k for k in keys if cluster.master_port(f"t:e:{k}") == victim.port]
        assert moved
        victim.kill()
        # the replica is elected once the others see the master down (node timeout: 2 s)
        await eventually_async(lambda: cluster.master_port(f"t:e:{moved[0]}") != victim.port, 20, "the failover")

        async def all_served() -> bool:
            try:
                await layer.set("after", entry("after"))
                return all([bool(await layer.get(k)) for k in keys + ["after"]])
            except LayerError:  # until the client has the new slot map
                return False

        await eventually_async(all_served, 20, "L2 on the new master", interval=0.2)
        assert b"k3" in (await layer.get("k3")).body
    finally:
        await layer.aclose()


async def test_the_vector_stream_follows_its_master_failing_over(replicated_cluster):
    """The vector hash and stream live on one master (one hash tag): when it fails over, the
    follower rebuilds from its promoted replica and keeps applying new adds."""
    cluster = replicated_cluster
    a_client, b_client = make_client(cluster.url, TIMEOUT), make_client(cluster.url, TIMEOUT)
    a = RedisVectorStore(a_client, timeout=TIMEOUT)
    b = RedisVectorStore(b_client, timeout=TIMEOUT, backoff_min=0.05, backoff_max=0.5)
    rng = np.random.default_rng(5)

    def vec() -> np.ndarray:
        v = rng.standard_normal(16).astype(np.float32)
        return v / np.linalg.norm(v)

    index, stop = SemanticIndex(16), asyncio.Event()
    follower = asyncio.create_task(b.follow(index, stop))
    try:
        await a.publish_add("before", vec(), "p")
        await eventually_async(lambda: "before" in index, 5, "following")
        port = cluster.master_port(a.hash_key)
        with redis.Redis(port=port) as r:
            assert r.execute_command("WAIT", 1, 2000) == 1
        victim = next(n for n in cluster.nodes if n.port == port)
        victim.kill()
        await eventually_async(lambda: cluster.master_port(a.hash_key) != port, 20, "the failover")

        async def added_after() -> bool:
            try:
                await a.publish_add("after", vec(), "p")
                return True
            except LayerError:  # until the client has the new slot map
                return False

        await eventually_async(added_after, 20, "an add on the new master", interval=0.2)
        await eventually_async(lambda: "after" in index and "before" in index, 20, "the follower on the new master")
        assert b.stats["errors"] >= 1  # it lost the old master, then rebuilt
    finally:
        stop.set()
        await follower
        await a_client.aclose()
        await b_client.aclose()


async def test_the_live_relay_works_on_a_cluster(clients):
    from cache.live_relay import END, EVENTS, LiveRelay

    leader = LiveRelay(clients(), prefix="t:", timeout_s=TIMEOUT, flush_s=0.01)
    pub = leader.publisher("k", "tok")
    pub.push(b"data: 1\n\n")
    pub.push(b"data: 2\n\n")
    pub.close(ok=True)
    await leader.aclose()
    follower = LiveRelay(clients(), prefix="t:", timeout_s=TIMEOUT, block_ms=100)
    entries = await follower.read("k", "tok", b"0")
    assert b"".join(f.get(EVENTS, b"") for _, f in entries) == b"data: 1\n\ndata: 2\n\n"
    assert entries[-1][1][END] == b"ok"
