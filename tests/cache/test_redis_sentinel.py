"""Redis Sentinel: the URL, and L2 following the master through a failover (real
redis-server processes: a master, a replica and a sentinel)."""
from __future__ import annotations

import time

import pytest
import redis

from cache.breaker import CircuitBreaker
from cache.layer import LayerError
from cache.redis_client import RedisURLError, SentinelURL, make_client
from cache.redis_layer import RedisLayer
from cache.redis_pipe import RedisPipe
from proxy.settings import ConfigError, load_settings
from tests.cache.test_layer_contract import entry
from tests.conftest import eventually_async


def test_the_url_names_sentinels_service_database_and_credentials():
    spec = SentinelURL.parse("redis+sentinel://app:s%40cret@10.0.0.1:26379,[::1]:26380/cache/2?sentinel_password=x")
    assert spec.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (spec.service, spec.db, spec.username, spec.password, spec.sentinel_password) == ("cache", 2, "app", "s@cret", "x")
    plain = SentinelURL.parse("redis+sentinel://h:1/m")
    assert (plain.db, plain.username, plain.password, plain.sentinel_password) == (0, None, None, None)


@pytest.mark.parametrize("url", [
    "redis+sentinel:///m", "redis+sentinel://h/m", "redis+sentinel://h:1", "redis+sentinel://h:1/m/x",
    "redis+sentinel://h:1/m/0/extra", "redis+sentinel://h:1/m?socket_timeout=3",
])
def test_a_malformed_sentinel_url_is_refused_at_start_with_the_field_named(url):
    with pytest.raises(RedisURLError):
        SentinelURL.parse(url)
    with pytest.raises(ConfigError, match="redis.url"):
        load_settings(None, {"redis": {"url": url}})


def test_an_unknown_scheme_is_refused_at_start():
    with pytest.raises(ConfigError, match="unsupported Redis URL scheme"):
        load_settings(None, {"redis": {"url": "memcached://localhost:11211"}})
    assert not RedisPipe.supports("redis+sentinel://h:1/m")  # the pipe speaks to one server only


async def test_l2_follows_the_master_through_a_failover(sentinel_group):
    client = make_client(sentinel_group.url, 0.5)
    layer = RedisLayer(client, prefix="t:", timeout_s=0.5, breaker=CircuitBreaker(3, 0.2, time.monotonic))
    try:
        await layer.set("before", entry("written before the failover"))
        with redis.Redis(port=sentinel_group.master_port()) as master:
            assert master.execute_command("WAIT", 1, 2000) == 1  # the replica has it
        old_port = sentinel_group.master_port()
        new_port = sentinel_group.failover()
        assert new_port != old_port
        with redis.Redis(port=old_port) as old:  # until it is demoted the old master still takes writes (and loses them)
            await eventually_async(lambda: old.execute_command("ROLE")[0] == b"slave", 15, "the old master demoted")

        async def written_to_the_new_master() -> bool:
            try:
                await layer.set("after", entry("written after the failover"))
            except LayerError:  # the old master's connection fails or answers READONLY: it re-asks the sentinel
                return False
            return True

        await eventually_async(written_to_the_new_master, 15, "a write after the failover")
        assert b"written before" in (await layer.get("before")).body
        assert b"written after" in (await layer.get("after")).body
        with redis.Redis(port=new_port) as master:
            assert master.execute_command("ROLE")[0] == b"master" and master.exists("t:e:after")
    finally:
        await layer.aclose()
