"""The pipelined request-path connection against a real redis-server: replies reach
their own callers (concurrent, after a caller gave up, after an error reply), a stalled
or dead server fails the waiting callers, and a server that comes back is picked up."""
from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError as RedisConnectionError, ResponseError

from cache.redis_pipe import RedisPipe, pack
from tests.conftest import RedisProcess, eventually_async


@pytest.fixture
async def pipe(redis_url):
    p = RedisPipe.from_url(redis_url, connect_timeout_s=0.5)
    yield p
    await p.aclose()


@pytest.fixture
async def admin(clients):
    return clients()


def test_pack_is_resp_bulk_strings():
    assert pack((b"GET", "k", 12)) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack(("é",)) == b"*1\r\n$2\r\n\xc3\xa9\r\n"


def test_only_plain_and_unix_urls_are_spoken():
    assert RedisPipe.supports("redis://h:1/0") and RedisPipe.supports("unix:///tmp/r.sock")
    assert not RedisPipe.supports("rediss://h:1/0")
    with pytest.raises(ValueError):
        RedisPipe.from_url("rediss://h:1/0", connect_timeout_s=1)


async def test_get_set_and_absent(pipe, admin):
    await admin.set("a", b"\x00\xffbinary")
    assert await pipe.execute(b"GET", "a") == b"\x00\xffbinary"
    assert await pipe.execute(b"GET", "absent") is None
    assert await pipe.execute(b"SET", "b", "1", b"NX", b"PX", 5000) == b"OK"
    assert await pipe.execute(b"SET", "b", "2", b"NX", b"PX", 5000) is None  # NX: not taken twice


async def test_concurrent_commands_each_get_their_own_reply(pipe, admin):
    values = {f"k{i}": os.urandom(1 + i % 300) for i in range(300)}
    await admin.mset(values)
    keys = list(values) + ["missing"]
    got = await asyncio.gather(*(pipe.execute(b"GET", k) for k in keys))
    assert got == [values[k] for k in values] + [None]


async def test_an_error_reply_goes_to_its_caller_only(pipe, admin):
    await admin.set("s", "text")
    results = await asyncio.gather(pipe.execute(b"INCR", "s"), pipe.execute(b"GET", "s"), return_exceptions=True)
    assert isinstance(results[0], ResponseError)
    assert results[1] == b"text"


async def test_a_caller_that_gave_up_does_not_shift_the_replies(pipe, admin):
    await admin.mset({"x": "X", "y": "Y"})
    assert await pipe.execute(b"GET", "x") == b"X"  # connected
    await admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pipe.execute(b"GET", "x")
    async with asyncio.timeout(5):  # answered once the pause ends, after the abandoned GET's reply
        assert await pipe.execute(b"GET", "y") == b"Y"
        assert await pipe.execute(b"GET", "x") == b"X"


async def test_a_stalled_connection_is_dropped_and_replaced(redis_url, admin):
    pipe = RedisPipe.from_url(redis_url, connect_timeout_s=0.5, stall_s=0.1)
    try:
        await admin.set("x", "X")
        assert await pipe.execute(b"GET", "x") == b"X"
        first = pipe._conn
        await admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        stuck = asyncio.ensure_future(pipe.execute(b"GET", "x"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.15):
                await pipe.execute(b"GET", "x")
        async with asyncio.timeout(5):
            assert await pipe.execute(b"GET", "x") == b"X"  # on a new connection, once unpaused
        assert pipe._conn is not first
        with pytest.raises(RedisConnectionError, match="stalled"):
            await stuck  # the waiting caller on the dropped connection was told
    finally:
        await pipe.aclose()


async def test_a_dead_server_fails_fast_and_a_restarted_one_is_picked_up(redis_proc, redis_url):
    pipe = RedisPipe.from_url(redis_url, connect_timeout_s=0.5)
    try:
        assert await pipe.execute(b"SET", "k", "v") == b"OK"
        redis_proc.kill()
        with pytest.raises(RedisConnectionError):
            async with asyncio.timeout(2):
                await pipe.execute(b"GET", "k")
        with pytest.raises(RedisConnectionError, match="connect failed"):
            async with asyncio.timeout(2):
                await pipe.execute(b"GET", "k")
        redis_proc.start()
        async with asyncio.timeout(5):
            assert await pipe.execute(b"GET", "k") is None  # a fresh server: empty, but answering
    finally:
        if redis_proc.proc is None or redis_proc.proc.poll() is not None:
            redis_proc.start()
        await pipe.aclose()


async def test_a_closed_pipe_refuses_commands(pipe):
    await pipe.execute(b"PING")
    await pipe.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await pipe.execute(b"PING")


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory):
    sock = str(tmp_path_factory.mktemp("redis-sock") / "r.sock")
    rp = RedisProcess(("--requirepass", "s3cret", "--unixsocket", sock, "--unixsocketperm", "700"))
    rp.start()
    yield rp, sock
    rp.stop()


@pytest.mark.parametrize("via", ["tcp", "unix"])
async def test_password_and_database_from_the_url(guarded_redis, via):
    rp, sock = guarded_redis
    url = f"redis://:s3cret@127.0.0.1:{rp.port}/3" if via == "tcp" else f"unix://:s3cret@{sock}?db=3"
    admin = aioredis.Redis.from_url(url)
    pipe = RedisPipe.from_url(url, connect_timeout_s=1)
    try:
        await admin.set("db3", via)
        assert await pipe.execute(b"GET", "db3") == via.encode()
    finally:
        await admin.aclose()
        await pipe.aclose()


async def test_a_wrong_password_is_an_authentication_error(guarded_redis):
    rp, _ = guarded_redis
    pipe = RedisPipe.from_url(f"redis://:wrong@127.0.0.1:{rp.port}/0", connect_timeout_s=1)
    try:
        with pytest.raises(AuthenticationError):
            await pipe.execute(b"GET", "k")
    finally:
        await pipe.aclose()


async def test_a_connection_the_server_closed_is_replaced(pipe, admin):
    await admin.set("k", "v")
    assert await pipe.execute(b"GET", "k") == b"v"
    first = pipe._conn
    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # every other client
    await eventually_async(lambda: not first.usable, within=5, what="the server's close reaching the transport")
    assert await pipe.execute(b"GET", "k") == b"v"
    assert pipe._conn is not first
