"""Bans and purges shared by every replica through Redis.

Bans live in a Redis hash (so a replica that starts or reconnects loads them all) and
are announced on a pub/sub channel, as are purges of individual keys. Each replica
applies a message to its own L1 and ban list and acknowledges it; the publisher waits
(bounded) for as many acknowledgements as PUBLISH reported receivers, so when the admin
call returns, every live replica has already stopped serving what was invalidated.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import orjson

from cache.layer import LayerError
from cache.redis_client import REDIS_ERRORS, Client, open_pubsub
from policies.invalidation import Ban

log = logging.getLogger("stratacache.bans")

OnBan = Callable[[Ban], Awaitable[None]]
OnPurge = Callable[[list[str]], Awaitable[None]]


class BanBus:
    def __init__(self, client: Client, *, prefix: str, timeout_s: float, ban_lifetime_s: float,
                 on_ban: OnBan, on_purge: OnPurge) -> None:
        self.client = client
        self.hash = f"{prefix}bans"
        self.channel = f"{prefix}bans:ch"
        self.ack_prefix = f"{prefix}bans:ack:"
        self.timeout_s = timeout_s
        self.ban_lifetime_s = ban_lifetime_s
        self.on_ban = on_ban
        self.on_purge = on_purge
        self.ready = asyncio.Event()

    async def publish_ban(self, ban: Ban, ack_wait_s: float = 2.0) -> int:
        msg = {"type": "ban", "id": ban.id, "ban": ban.to_dict()}
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self.client.hset(self.hash, ban.id, orjson.dumps(ban.to_dict()))
        except REDIS_ERRORS as exc:
            raise LayerError(f"ban store: {exc}") from exc
        return await self._announce(msg, ack_wait_s)

    async def publish_purge(self, keys: list[str], ack_wait_s: float = 2.0) -> int:
        if not keys:
            return 0
        return await self._announce({"type": "purge", "id": uuid.uuid4().hex, "keys": keys}, ack_wait_s)

    async def _announce(self, msg: dict, ack_wait_s: float) -> int:
        ack_key = self.ack_prefix + msg["id"]
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                receivers = int(await self.client.publish(self.channel, orjson.dumps(msg)))
        except REDIS_ERRORS as exc:
            raise LayerError(f"ban channel: {exc}") from exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ack_wait_s
        acked = 0
        while receivers and loop.time() < deadline:
            try:
                acked = int(await self.client.scard(ack_key))
            except REDIS_ERRORS:
                break
            if acked >= receivers:
                break
            await asyncio.sleep(0.01)
        if acked < receivers:
            log.warning("not every replica acknowledged an invalidation in time",
                        extra={"receivers": receivers, "acked": acked})
        return receivers

    async def load_all(self) -> int:
        raw = await self.client.hgetall(self.hash)
        n = 0
        for _bid, data in raw.items():
            await self.on_ban(Ban.from_dict(orjson.loads(data)))
            n += 1
        return n

    async def _handle(self, data: bytes) -> None:
        msg = orjson.loads(data)
        if msg.get("type") == "ban":
            await self.on_ban(Ban.from_dict(msg["ban"]))
        elif msg.get("type") == "purge":
            await self.on_purge([str(k) for k in msg.get("keys") or []])
        ack_key = self.ack_prefix + str(msg.get("id"))
        await self.client.sadd(ack_key, uuid.uuid4().hex)
        await self.client.expire(ack_key, 60)

    async def prune(self, now: float) -> None:
        raw = await self.client.hgetall(self.hash)
        stale = [bid for bid, data in raw.items()
                 if Ban.from_dict(orjson.loads(data)).issued_at + self.ban_lifetime_s < now]
        if stale:
            await self.client.hdel(self.hash, *stale)

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe, load existing bans, apply messages; reconnect with backoff forever."""
        backoff = 0.1
        while not stop.is_set():
            pubsub = None
            try:
                pubsub = await open_pubsub(self.client)
                await pubsub.subscribe(self.channel)
                await self.load_all()
                self.ready.set()
                backoff = 0.1
                while not stop.is_set():
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        try:
                            await self._handle(msg["data"])
                        except (ValueError, KeyError, TypeError) as exc:
                            log.warning("bad invalidation message", extra={"error": str(exc)})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the subscriber outlives any one failure
                if isinstance(exc, REDIS_ERRORS):
                    log.warning("ban channel lost, reconnecting", extra={"error": f"{type(exc).__name__}: {exc}"})
                else:
                    log.exception("ban channel failed, reconnecting")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except REDIS_ERRORS:
                        pass
