"""Cross-replica single flight: a Redis lock with a short expiry (SET NX PX) that its
leader renews while it generates (`hold`), so a dead leader's lock frees itself soon and
a live one keeps it however long the answer takes. Release deletes only our own token
(compare-and-delete).
With a `RedisPipe` the lock is taken on the request path's pipelined connection."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cache.entry import Key
from cache.layer import LayerError
from cache.redis_call import bounded_call
from cache.redis_client import Client
from cache.redis_pipe import RedisPipe

T = TypeVar("T")

RELEASE_TRIES = 6  # a release Redis did not answer: tried again for about 10 s (backing off from the timeout to 2 s)
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLock:
    def __init__(self, client: Client, *, prefix: str, timeout_s: float, pipe: RedisPipe | None = None) -> None:
        self.client = client
        self.pipe = pipe
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.owner = uuid.uuid4().hex[:16]  # this process: the start of every token it takes
        self._giving_back: set[asyncio.Task] = set()

    def _k(self, key: Key) -> str:
        return f"{self.prefix}lock:{key}"

    async def acquire(self, key: Key, ttl_s: float) -> str | None:
        """Our token when we lead, None when another replica does. Raises LayerError.

        An acquisition whose answer never came back (its deadline passed, the connection
        broke, or the caller was cancelled) may still have taken the lock on the server; its
        token is given back at once (compare-and-delete: harmless if it was not taken), so no
        other replica waits out the lock's expiry for a leader that does not exist."""
        token = f"{self.owner}.{uuid.uuid4().hex}"
        px = max(1, int(ttl_s * 1000))
        try:
            ok = await self._call("acquire", (lambda: self.pipe.execute(b"SET", self._k(key), token, b"NX", b"PX", px))
                                  if self.pipe is not None else
                                  (lambda: self.client.set(self._k(key), token, nx=True, px=px)))
        except (LayerError, asyncio.CancelledError):
            self._give_back(key, token)
            raise
        return token if ok else None

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One Redis call within the lock's deadline; its failures become LayerError."""
        return await bounded_call(f"redis lock {what}", self.timeout_s, fn)

    async def holder(self, key: Key) -> str:
        """The token holding the key's lock, "" when none does. Raises LayerError."""
        value = await self._call("get", lambda: self.client.get(self._k(key)))
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return value or ""

    def is_ours(self, token: str) -> bool:
        """Whether `token` was taken by this process.

        For a leader told the lock is taken: within a process one flight per key leads, so a
        lock of this process's is a leftover, an acquisition whose answer was lost (being
        given back) or the release of a flight just finished, not a leader to wait for."""
        return token.startswith(self.owner + ".")

    def _give_back(self, key: Key, token: str) -> None:
        task = asyncio.ensure_future(self._release_unanswered(key, token))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def renew(self, key: Key, token: str, ttl_s: float) -> bool:
        """Push our lock's expiry `ttl_s` ahead (compare-and-expire). False when it is no
        longer ours; raises LayerError when Redis did not answer."""
        px = max(1, int(ttl_s * 1000))
        return bool(await self._call("renew", lambda: self.client.eval(_RENEW, 1, self._k(key), token, px)))

    async def hold(self, key: Key, token: str, ttl_s: float) -> None:
        """Renew our lock every third of `ttl_s` until cancelled or it is no longer ours, so
        that its expiry can be short (a dead leader frees it soon) while a long generation
        keeps it. A renewal Redis did not answer is tried again at the next tick."""
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                if not await self.renew(key, token, ttl_s):
                    return
            except LayerError:
                continue

    async def release(self, key: Key, token: str) -> bool:
        """True when our lock was there and is gone; False when it was not ours (or not
        there), or Redis did not answer: then the release is retried in the background
        (bounded), since a replica waiting for our entry takes the lock over only once it
        is free, and would otherwise wait until it expires."""
        try:
            return await self._delete_if_ours(key, token)
        except LayerError:
            self._give_back(key, token)
            return False

    async def _delete_if_ours(self, key: Key, token: str) -> bool:
        return bool(await self._call("release", (lambda: self.pipe.execute(b"EVAL", _RELEASE, 1, self._k(key), token))
                                     if self.pipe is not None else
                                     (lambda: self.client.eval(_RELEASE, 1, self._k(key), token))))

    async def _release_unanswered(self, key: Key, token: str) -> None:
        """Until Redis answers (RELEASE_TRIES at most, backing off), and once more a deadline
        later when the lock was not there: a SET sent on a connection that then broke can
        reach the server after a release sent on another connection."""
        delay = self.timeout_s
        for _ in range(RELEASE_TRIES):
            try:
                if await self._delete_if_ours(key, token):
                    return
                break
            except LayerError:
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
        await asyncio.sleep(self.timeout_s)
        with contextlib.suppress(LayerError):
            await self._delete_if_ours(key, token)


class _Shared:
    __slots__ = ("task", "askers")

    def __init__(self, task: "asyncio.Task[str | None]") -> None:
        self.task = task
        self.askers = 0


class EarlyLocks:
    """Lock acquisitions started ahead of need, one per key in this process.

    A miss asks for its key's lock as soon as L1 and L2 have missed, so the round trip
    runs while the semantic stage embeds instead of after it. Concurrent lookups of one
    key in this process share one acquisition: the request that becomes the key's flight
    leader takes it over (`Claim.lead`); when every request that asked has gone another
    way (a hit, a follower, an error) without a leader taking it, the lock, if it was
    won, is released, and a new acquisition of that key waits for the release (so this
    process never mistakes its own leftover lock for another replica's)."""

    def __init__(self, lock: RedisLock, ttl_s: float) -> None:
        self.lock = lock
        self.ttl_s = ttl_s
        self._shared: dict[Key, _Shared] = {}
        self._releasing: dict[Key, asyncio.Task] = {}

    def claim(self, key: Key) -> "Claim":
        return Claim(self, key)

    def _acquire(self, key: Key) -> "asyncio.Task[str | None]":
        return asyncio.ensure_future(self._acquire_after_release(key, self._releasing.get(key)))

    async def _acquire_after_release(self, key: Key, release: asyncio.Task | None) -> str | None:
        if release is not None:
            await asyncio.shield(release)  # bounded: the release has its own deadline
        return await self.lock.acquire(key, self.ttl_s)

    def _ask(self, key: Key) -> None:
        s = self._shared.get(key)
        if s is None:
            s = self._shared[key] = _Shared(self._acquire(key))
        s.askers += 1

    def _take(self, key: Key) -> "asyncio.Task[str | None]":
        s = self._shared.pop(key, None)
        return s.task if s is not None else self._acquire(key)

    def _leave(self, key: Key) -> None:
        s = self._shared.get(key)
        if s is None:
            return  # a leader took it over
        s.askers -= 1
        if s.askers == 0:
            del self._shared[key]
            r = self._releasing[key] = asyncio.ensure_future(self._give_back(key, s.task))
            r.add_done_callback(lambda _r: self._releasing.pop(key, None) if self._releasing.get(key) is r else None)

    async def _give_back(self, key: Key, acquisition: "asyncio.Task[str | None]") -> None:
        try:
            token = await acquisition
        except LayerError:
            return  # nothing was taken
        if token:
            await self.lock.release(key, token)

    def __len__(self) -> int:
        return len(self._shared) + len(self._releasing)


class Claim:
    """One request's part in its key's early lock: `ask` when the lookup reaches the
    semantic stage (a miss is likely to need the lock), then exactly one of `lead`
    (this request leads the key's flight: the acquisition is now its own) or `leave`
    (anything else). `ask` and `leave` are idempotent and do nothing once settled."""

    __slots__ = ("locks", "key", "asked", "settled")

    def __init__(self, locks: EarlyLocks, key: Key) -> None:
        self.locks = locks
        self.key = key
        self.asked = False
        self.settled = False

    def ask(self) -> None:
        if not self.asked and not self.settled:
            self.asked = True
            self.locks._ask(self.key)

    def lead(self) -> "asyncio.Task[str | None]":
        """The acquisition for this key: the one under way if a request asked, else a new
        one. Resolves to our token, or None when another replica holds the lock; raises
        LayerError when Redis could not answer."""
        self.settled = True
        return self.locks._take(self.key)

    def leave(self) -> None:
        if self.asked and not self.settled:
            self.locks._leave(self.key)
        self.settled = True
