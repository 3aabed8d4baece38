"""A leader's answer, relayed live to the replicas that wait on it.

Within a process, every follower of a streaming flight gets its events as they arrive
(`cache.flight`). Across replicas the leader holds the key's Redis lock (`cache.redis_lock`)
and the others wait; with this relay they do not wait for the whole answer: the leader
writes its SSE events to a Redis stream named by its lock token
(`<prefix>live:<key>:<token>`, so one leadership's stream is never mistaken for the next),
at most one write per `flush_s` (the first event at once), and ends it with a marker
(`ok` once the answer is complete, and stored if it could be; `error` otherwise). Each
write pushes the stream's expiry `keep_s` ahead, so a dead leader's stream goes away by
itself; the end marker leaves it `end_keep_s` more, for followers to read the end (the
stored entry serves anyone later). A follower reads the
leader's token from the lock and tails that stream with blocking reads.

Fail open: a write Redis does not take stops the publisher (its followers fall back to
waiting for the stored entry, or for the lock to come free); a read that fails is the
follower's to handle.
"""
from __future__ import annotations

import asyncio
import logging

from cache.entry import Key
from cache.layer import LayerError
from cache.redis_call import bounded_call
from cache.redis_client import Client

log = logging.getLogger(__name__)

EVENTS = b"e"  # field: SSE events, concatenated
END = b"end"  # field: b"ok" or b"error", the stream's last entry


class LiveRelay:
    def __init__(self, client: Client, *, prefix: str, timeout_s: float, flush_s: float = 0.02,
                 keep_s: float = 15.0, end_keep_s: float = 5.0, block_ms: int = 250) -> None:
        """`client`: one whose socket timeout outlasts `block_ms` (the background pool)."""
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.flush_s = flush_s
        self.keep_ms = max(1, int(keep_s * 1000))
        self.end_keep_ms = max(1, int(end_keep_s * 1000))
        self.block_ms = block_ms
        self._writers: set[asyncio.Task] = set()

    def stream_key(self, key: Key, token: str) -> str:
        return f"{self.prefix}live:{key}:{token}"

    def publisher(self, key: Key, token: str) -> LivePublisher:
        return LivePublisher(self, self.stream_key(key, token))

    async def read(self, key: Key, token: str, after: bytes) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The entries after id `after` (b"0": from the start) of the stream of the leader
        holding `token`, waiting up to `block_ms` for one; [] when none came. Raises LayerError."""
        name = self.stream_key(key, token)
        resp = await bounded_call("live relay read", self.timeout_s + self.block_ms / 1000,
                                  lambda: self.client.xread({name: after}, block=self.block_ms))
        if not resp:
            return []
        entries = resp[name] if isinstance(resp, dict) else resp[0][1]  # RESP3 / RESP2 shapes
        return [(_bytes(i), {_bytes(k): _bytes(v) for k, v in fields.items()}) for i, fields in entries]

    def _start(self, publisher: LivePublisher) -> None:
        task = asyncio.ensure_future(publisher._run())
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def aclose(self) -> None:
        """Give the writers under way a deadline to finish, then stop them."""
        if self._writers:
            _done, pending = await asyncio.wait(set(self._writers), timeout=self.timeout_s)
            for task in pending:
                task.cancel()


class LivePublisher:
    """One leadership's writer: `push` events as they arrive, then `close` once."""

    def __init__(self, relay: LiveRelay, name: str) -> None:
        self.relay = relay
        self.name = name
        self._pending: list[bytes] = []
        self._end: bytes | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._failed = False

    def push(self, event: bytes) -> None:
        if self._failed or self._end is not None:
            return
        self._pending.append(event)
        self._kick()

    def close(self, ok: bool) -> None:
        """Call after the entry is stored (ok) or once the answer cannot be (not ok)."""
        if self._end is None:
            self._end = b"ok" if ok else b"error"
            self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if not self._running and not self._failed:
            self._running = True
            self.relay._start(self)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            fields: dict[bytes, bytes] = {}
            if self._pending:
                fields[EVENTS] = b"".join(self._pending)
                self._pending.clear()
            end = self._end
            if end is not None:
                fields[END] = end
            if fields:
                try:
                    await self._write(fields)
                except LayerError as exc:
                    self._failed = True
                    log.warning("live relay stopped: %s", exc)
                    return
            if end is not None:
                return
            await asyncio.sleep(self.relay.flush_s)

    async def _write(self, fields: dict[bytes, bytes]) -> None:
        async def xadd_and_expire() -> None:
            pipe = self.relay.client.pipeline(transaction=False)
            pipe.xadd(self.name, fields)
            pipe.pexpire(self.name, self.relay.end_keep_ms if END in fields else self.relay.keep_ms)
            await pipe.execute()

        await bounded_call("live relay write", self.relay.timeout_s, xadd_and_expire)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
