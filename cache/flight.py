"""Single-flight coalescing: one upstream call shared by every concurrent request
with the same exact key (in-process; the Redis lock in `cache.redis_lock` extends it
across replicas).

A `Flight` is a log of SSE events plus a final outcome. The producer (the upstream
pump, owned by the proxy) appends; any number of subscribers read the log from the
start and then live, so a follower that joins late still gets every chunk. When the
last subscriber leaves before the end, the producer task is cancelled, so the
upstream request stops and the GPU is freed.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cache.entry import Entry, Key


@dataclass(frozen=True, slots=True)
class Upstart:
    """How the upstream answered, known before the body: status, headers, streaming or not."""

    status: int
    headers: dict[str, str]
    streaming: bool
    via_peer: bool = False
    """Relayed from the leader on another replica (cross-replica coalescing)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of a flight. `entry` is set when the answer completed cleanly and is
    cacheable-shaped; otherwise `body`/`status` carry what the upstream sent (an error,
    or an uncacheable body) and `error` says why a stream broke, if it did."""

    status: int
    body: bytes
    entry: Entry | None = None
    error: str | None = None
    via_peer: bool = False
    """Served from the entry another replica's leader stored (cross-replica coalescing)."""


class Flight:
    def __init__(self, key: Key) -> None:
        self.key = key
        self.events: list[tuple[bytes, str]] = []  # (event bytes, kind from SSERecorder)
        self.upstart: asyncio.Future[Upstart] = asyncio.get_running_loop().create_future()
        self.outcome: Outcome | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()
        self.subscribers = 0
        self.task: asyncio.Task | None = None

    # -- producer side -----------------------------------------------------------
    def start(self, upstart: Upstart) -> None:
        if not self.upstart.done():
            self.upstart.set_result(upstart)

    def push(self, event: bytes, kind: str) -> None:
        self.events.append((event, kind))
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if not self.upstart.done():
            self.upstart.set_result(Upstart(outcome.status, {"content-type": "application/json"}, False))
        self._finished.set()
        self._changed.set()

    # -- subscriber side ---------------------------------------------------------
    def subscribe(self) -> None:
        self.subscribers += 1

    def unsubscribe(self) -> None:
        self.subscribers -= 1
        if self.subscribers <= 0 and self.outcome is None and self.task is not None:
            self.task.cancel()  # nobody is listening: stop generating

    async def follow(self) -> AsyncIterator[tuple[bytes, str]]:
        """Every event from the first, then live ones, until the flight finishes."""
        i = 0
        while True:
            changed = self._changed
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.outcome is not None:
                return
            await changed.wait()

    async def wait(self) -> Outcome:
        await self._finished.wait()
        assert self.outcome is not None
        return self.outcome

    @property
    def finished(self) -> bool:
        return self.outcome is not None


class Coalescer:
    """Key -> in-flight `Flight`. Disabled, every request gets its own flight."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._flights: dict[Key, Flight] = {}

    def join(self, key: Key) -> tuple[Flight, bool]:
        """Returns (flight, is_leader). The leader must start the producer task."""
        if self.enabled:
            f = self._flights.get(key)
            if f is not None and not f.finished:
                f.subscribe()
                return f, False
        f = Flight(key)
        f.subscribe()
        if self.enabled:
            self._flights[key] = f
        return f, True

    def done(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def __len__(self) -> int:
        return len(self._flights)
