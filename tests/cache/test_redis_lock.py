"""The cross-replica lock and the early claims on it, against a real redis-server."""
from __future__ import annotations

import asyncio

import pytest

from cache.layer import LayerError
from cache.redis_lock import EarlyLocks, RedisLock
from cache.redis_pipe import RedisPipe
from tests.conftest import eventually_async


@pytest.fixture(params=["pool", "pipe"])
async def lock(request, redis_url, clients):
    pipe = RedisPipe.from_url(redis_url, connect_timeout_s=0.5) if request.param == "pipe" else None
    yield RedisLock(clients(), prefix="t:", timeout_s=0.5, pipe=pipe)
    if pipe is not None:
        await pipe.aclose()


async def test_one_replica_leads_and_only_its_token_releases(lock, clients):
    other = RedisLock(clients(), prefix="t:", timeout_s=0.5)
    token = await lock.acquire("k", 30)
    assert token
    assert await other.acquire("k", 30) is None  # held
    await other.release("k", "not-the-token")
    assert await other.acquire("k", 30) is None  # still held: compare-and-delete
    await lock.release("k", token)
    assert await other.acquire("k", 30)


async def test_a_request_that_asked_and_leads_gets_the_acquisition_under_way(lock, clients):
    early = EarlyLocks(lock, 30)
    claim = early.claim("k")
    claim.ask()
    token = await claim.lead()
    assert token and await clients().get("t:lock:k") == token.encode()
    claim.leave()  # after lead: nothing to give back
    assert await clients().get("t:lock:k") == token.encode()
    assert len(early) == 0


async def test_concurrent_askers_share_one_acquisition_and_the_leader_keeps_it(lock, clients):
    early = EarlyLocks(lock, 30)
    a, b, c = early.claim("k"), early.claim("k"), early.claim("k")
    for cl in (a, b, c):
        cl.ask()
    assert len(early) == 1
    b.leave()
    token = await a.lead()
    c.leave()
    assert token  # not None: the other askers were this process, not another replica
    assert await clients().get("t:lock:k") == token.encode()


async def test_a_lock_nobody_leads_with_is_given_back(lock, clients):
    early = EarlyLocks(lock, 30)
    a, b = early.claim("k"), early.claim("k")
    a.ask()
    b.ask()
    a.leave()
    b.leave()
    async def released():
        return not await clients().exists("t:lock:k") and len(early) == 0
    await eventually_async(released, within=5, what="the unused lock released")


async def test_a_leader_cancelled_while_its_lock_is_on_the_wire_leaves_no_lock(lock, clients):
    admin = clients()
    await admin.execute_command("CLIENT", "PAUSE", 300, "ALL")  # the SET waits on the server
    acquiring = asyncio.ensure_future(lock.acquire("k", 30))
    await asyncio.wait({acquiring}, timeout=0.1)
    acquiring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    await clients().set("probe", 1)  # answered once the pause is over and the SET has run
    async def gone():
        return not await admin.exists("t:lock:k")
    await eventually_async(gone, within=2, what="the cancelled acquisition's lock given back")
    assert await RedisLock(clients(), prefix="t:", timeout_s=0.5).acquire("k", 30), "another replica still waits"


async def test_a_new_leader_right_after_a_give_back_is_not_fooled_by_the_leftover(lock):
    early = EarlyLocks(lock, 30)
    first = early.claim("k")
    first.ask()
    first.leave()  # its acquisition not even sent yet, let alone its release
    token = await early.claim("k").lead()
    assert token, "this process's own leftover lock was taken for another replica's"


async def test_another_replica_holding_the_lock_resolves_to_none(lock, clients):
    other = RedisLock(clients(), prefix="t:", timeout_s=0.5)
    assert await other.acquire("k", 30)
    claim = EarlyLocks(lock, 30).claim("k")
    claim.ask()
    assert await claim.lead() is None


async def test_redis_down_is_a_layer_error_for_the_leader(redis_proc, redis_url, clients):
    pipe = RedisPipe.from_url(redis_url, connect_timeout_s=0.3)
    early = EarlyLocks(RedisLock(clients(), prefix="t:", timeout_s=0.3, pipe=pipe), 30)
    redis_proc.kill()
    try:
        claim = early.claim("k")
        claim.ask()
        with pytest.raises(LayerError):
            await claim.lead()
        other = early.claim("j")
        other.ask()
        other.leave()  # a failed acquisition has nothing to give back
        await eventually_async(lambda: len(early) == 0, within=5, what="the failed claim forgotten")
    finally:
        redis_proc.start()
        await pipe.aclose()


class _FirstEvalLost:
    """A client whose first EVAL gets no answer (a connection that broke), then works."""

    def __init__(self, client) -> None:
        self.client, self.lost = client, 0

    async def eval(self, *args):
        if not self.lost:
            self.lost += 1
            raise ConnectionError("connection lost")
        return await self.client.eval(*args)


async def test_a_release_redis_did_not_answer_is_retried_so_a_waiting_replica_can_lead(clients):
    flaky = _FirstEvalLost(clients())
    lock, other = RedisLock(flaky, prefix="t:", timeout_s=0.1), RedisLock(clients(), prefix="t:", timeout_s=0.5)
    token = await RedisLock(flaky.client, prefix="t:", timeout_s=0.5).acquire("k", 60)
    assert await lock.release("k", token) is False and flaky.lost == 1  # not answered: still held
    # retried in the background: the lock comes free long before its 60 s expiry
    await eventually_async(lambda: other.acquire("k", 60), 5, "the release retried")


async def test_a_process_recognises_its_own_lock_and_not_another_replicas(lock, clients):
    other = RedisLock(clients(), prefix="t:", timeout_s=0.5)
    assert await lock.holder("k") == ""  # free
    token = await other.acquire("k", 30)
    assert await lock.holder("k") == token and other.is_ours(token) and not lock.is_ours(token)
    await other.release("k", token)
    mine = await lock.acquire("k", 30)
    assert mine and await lock.holder("k") == mine and lock.is_ours(mine)


async def test_a_held_lock_is_renewed_and_expires_once_let_go(lock, clients):
    raw, other = clients(), RedisLock(clients(), prefix="t:", timeout_s=0.5)
    token = await lock.acquire("k", 0.3)
    assert not await lock.renew("k", "not-the-token", 0.3)
    holding = asyncio.create_task(lock.hold("k", token, 0.3))
    lowest = [300]

    async def renewed() -> bool:  # the expiry ran down, then was pushed ahead again
        pttl = await raw.pttl("t:lock:k")
        assert pttl > 0, "the lock expired while held"
        lowest[0] = min(lowest[0], pttl)
        return pttl > lowest[0] + 50

    for _ in range(3):  # several renewals: the lock outlives its 0.3 s expiry
        lowest[0] = 300
        await eventually_async(renewed, 5, "a renewal")
    assert await other.acquire("k", 0.3) is None
    holding.cancel()
    await eventually_async(lambda: other.acquire("k", 0.3), 5, "the lock expiring once let go")
