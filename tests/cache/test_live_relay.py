"""The live relay of a leader's events to other replicas, against a real redis-server."""
from __future__ import annotations

import asyncio

import pytest

from cache.layer import LayerError
from cache.live_relay import END, EVENTS, LiveRelay


async def read_all(relay: LiveRelay, key: str, token: str) -> tuple[bytes, bytes | None]:
    """Everything the leader wrote, until its end marker (or a read that waits in vain)."""
    events, last = b"", b"0"
    while True:
        entries = await relay.read(key, token, last)
        if not entries:
            return events, None
        for last, fields in entries:
            events += fields.get(EVENTS, b"")
            if END in fields:
                return events, fields[END]


async def test_a_follower_reads_every_event_in_order_then_the_end(clients):
    leader = LiveRelay(clients(), prefix="t:", timeout_s=0.5, flush_s=0.01, keep_s=30, end_keep_s=5)
    follower = LiveRelay(clients(), prefix="t:", timeout_s=0.5, block_ms=100)
    pub = leader.publisher("k", "tok1")
    for i in range(5):  # pushed before the writer runs: one write
        pub.push(b"data: %d\n\n" % i)
    pub.close(ok=True)
    await leader.aclose()
    events, end = await read_all(follower, "k", "tok1")
    assert events == b"".join(b"data: %d\n\n" % i for i in range(5)) and end == b"ok"
    ttl = await clients().pttl("t:live:k:tok1")
    assert 0 < ttl <= 5_000  # ended: kept only for followers to read the end
    assert await read_all(follower, "k", "tok2") == (b"", None)  # another leadership's stream is its own


async def test_a_failed_answer_ends_with_an_error_marker_and_nothing_is_written_after_the_end(clients):
    leader = LiveRelay(clients(), prefix="t:", timeout_s=0.5, flush_s=0.01)
    pub = leader.publisher("k", "tok")
    pub.push(b"data: 1\n\n")
    pub.close(ok=False)
    pub.push(b"data: late\n\n")
    await leader.aclose()
    assert await read_all(LiveRelay(clients(), prefix="t:", timeout_s=0.5, block_ms=50), "k", "tok") == \
        (b"data: 1\n\n", b"error")


async def test_a_redis_that_does_not_answer_stops_the_writer_and_fails_the_reader(clients):
    dead = clients("redis://127.0.0.1:1/0")
    pub_relay = LiveRelay(dead, prefix="t:", timeout_s=0.2)
    pub = pub_relay.publisher("k", "tok")
    pub.push(b"data: 1\n\n")
    pub.close(ok=True)
    await asyncio.wait_for(pub_relay.aclose(), 2)  # the writer gave up within its deadline
    with pytest.raises(LayerError):
        await LiveRelay(dead, prefix="t:", timeout_s=0.2, block_ms=50).read("k", "tok", b"0")
