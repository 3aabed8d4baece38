"""L3 persistence and sharing through Redis: the vectors behind every proxy's index.

Two Redis keys (with the default prefix "sc:"):

- `{sc:l3}vec`, a hash: cache key -> packed (partition, float32 vector). The state: a
  restarted proxy rebuilds its index from it.
- `{sc:l3}log`, a stream of changes, approximately trimmed to `stream_maxlen` entries.
  Fields: `op` ("add" | "remove" | any other op, e.g. "purge"), `key`, and for adds
  `partition` and `vec` (raw little-endian float32). Every proxy follows it to apply the
  others' adds and removes to its own index; its own come back too and are applied
  idempotently (an identical re-add is a no-op in `SemanticIndex`).

A publish writes the hash and the stream in one MULTI, so followers never see a change
that the hash does not hold. A MULTI on Redis Cluster takes keys of one slot only: the
braces (a hash tag) put both keys in the slot of "sc:l3", whatever the deployment.

Consistency: `rebuild` reads the stream's last id *before* scanning the hash, so every
change made during the scan is also in the stream after that id, and `follow` replays it.
Keys the index holds but the hash does not are removed (Redis is the truth). `follow`
rebuilds in full whenever it cannot be sure it saw every event: after any Redis error
(events may have been written while it was away or lost with the server) and when the
stream was trimmed past its position (it fell more than `stream_maxlen` events behind).

Failure policy: every Redis call has a deadline (`timeout`, on top of the client's socket
timeouts). `publish_*` and `rebuild` raise `LayerError`; after a deadline the outcome is
unknown (a MULTI already sent may still run). `follow` never raises except on
cancellation: it logs, counts (`stats`), backs off (bounded) and rebuilds.

The client must be created with `decode_responses=False` (vectors are raw bytes). The hash
has no per-field expiry: removes are published by whoever expires or purges entries.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np
from redis.exceptions import ResponseError

from cache.entry import Key
from cache.layer import LayerError
from cache.redis_client import REDIS_ERRORS, Client, connection_kwargs
from cache.semantic_index import SemanticIndex

log = logging.getLogger("stratacache.vector_store")

EventCallback = Callable[[str, dict[str, str | bytes]], None]
"""Called with (op, fields) for stream events other than "add" and "remove"; `fields`
maps field names to str values (bytes where a value is not UTF-8)."""

_PACK_VERSION = 1
_HEADER = struct.Struct("<BI")  # version, partition length in bytes
_VEC_DTYPE = np.dtype("<f4")


class CorruptVector(ValueError):
    """Stored bytes that do not decode to (partition, vector)."""


def pack(partition: str, vector: np.ndarray) -> bytes:
    """version (u8) | partition length (u32 LE) | partition UTF-8 | float32 LE vector."""
    p = partition.encode()
    return _HEADER.pack(_PACK_VERSION, len(p)) + p + np.asarray(vector, dtype=_VEC_DTYPE).tobytes()


def unpack(raw: bytes) -> tuple[str, np.ndarray]:
    """Raises `CorruptVector` for anything `pack` did not write."""
    try:
        version, plen = _HEADER.unpack_from(raw)
        if version != _PACK_VERSION:
            raise CorruptVector(f"unknown vector record version {version}")
        start = _HEADER.size + plen
        partition = raw[_HEADER.size:start].decode()
        body = raw[start:]
        if plen > len(raw) or not body or len(body) % _VEC_DTYPE.itemsize:
            raise CorruptVector("truncated vector record")
        return partition, np.frombuffer(body, dtype=_VEC_DTYPE).astype(np.float32)
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptVector(str(exc)) from exc


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


class RedisVectorStore:
    """Publishes L3 adds/removes to Redis and keeps one local index in sync with them.

    One store follows one index: it remembers the stream position `rebuild` left it at.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "sc:",
        timeout: float = 1.0,
        stream_maxlen: int = 100_000,
        block_ms: int = 1000,
        batch: int = 500,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        kwargs = connection_kwargs(client)
        if kwargs.get("decode_responses"):
            raise ValueError("RedisVectorStore needs a client with decode_responses=False")
        self.client = client
        self.hash_key = f"{{{prefix}l3}}vec"
        self.stream_key = f"{{{prefix}l3}}log"
        self._legacy_keys = ((f"{prefix}vec", self.hash_key), (f"{prefix}l3log", self.stream_key))
        self._legacy_checked = False
        self.timeout = timeout
        self.stream_maxlen = stream_maxlen
        # XREAD BLOCK must return before the socket times out, and within a second so that
        # a stop is noticed promptly.
        socket_timeout = kwargs.get("socket_timeout")
        if socket_timeout:
            block_ms = min(block_ms, int(socket_timeout * 500))
        self.block_ms = max(1, min(block_ms, 1000))
        self.batch = batch
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stats: Counter[str] = Counter()
        """applied, ignored, malformed, callback_errors, rebuilds, errors, gaps."""
        self._last_id: bytes | None = None

    @property
    def last_id(self) -> bytes | None:
        """The stream position applied so far (None before the first rebuild)."""
        return self._last_id

    # -- writes ---------------------------------------------------------------------------------
    async def publish_add(self, key: Key, vector: np.ndarray, partition: str) -> None:
        vec = np.asarray(vector, dtype=_VEC_DTYPE).reshape(-1)
        async with self._deadline("add"), self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.hash_key, key, pack(partition, vec))
            self._xadd(pipe, {"op": "add", "key": key, "partition": partition, "vec": vec.tobytes()})
            await pipe.execute()

    async def publish_remove(self, key: Key) -> bool:
        """Returns whether the hash held `key`."""
        async with self._deadline("remove"), self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.hash_key, key)
            self._xadd(pipe, {"op": "remove", "key": key})
            removed, _ = await pipe.execute()
        return bool(removed)

    async def publish(self, op: str, fields: Mapping[str, str | bytes]) -> None:
        """Append another kind of event (e.g. "purge") for followers' `on_event`."""
        if op in ("add", "remove"):
            raise ValueError("use publish_add / publish_remove")
        async with self._deadline(op):
            await self._xadd(self.client, {**fields, "op": op})

    def _xadd(self, target: Any, fields: Mapping[str, str | bytes]) -> Any:
        return target.xadd(self.stream_key, dict(fields), maxlen=self.stream_maxlen, approximate=True)

    # -- rebuild and follow ------------------------------------------------------------------------
    async def rebuild(self, index: SemanticIndex) -> int:
        """Load every stored vector into `index` and drop the keys Redis does not hold.

        Returns the number of vectors loaded; `follow` continues from the stream position
        read before the scan. Raises `LayerError` if Redis fails.
        """
        await self._adopt_legacy_keys()
        async with self._deadline("rebuild"):
            last = await self.client.xrevrange(self.stream_key, "+", "-", count=1)
        last_id = last[0][0] if last else b"0-0"
        seen: set[Key] = set()
        cursor = 0
        while True:
            async with self._deadline("rebuild"):
                cursor, items = await self.client.hscan(self.hash_key, cursor, count=self.batch)
            groups: dict[str, tuple[list[Key], list[np.ndarray]]] = {}
            for raw_key, raw in items.items():
                key = raw_key.decode()
                try:
                    partition, vec = unpack(raw)
                    if vec.shape[0] != index.dim:
                        raise CorruptVector(f"dimension {vec.shape[0]}, index has {index.dim}")
                except CorruptVector as exc:
                    self.stats["malformed"] += 1
                    log.warning("skipping a malformed stored vector: %s", exc)
                    continue
                keys, vecs = groups.setdefault(partition, ([], []))
                keys.append(key)
                vecs.append(vec)
                seen.add(key)
            for partition, (keys, vecs) in groups.items():
                await index.add_many(keys, np.stack(vecs), partition)
            if cursor == 0:
                break
        stale = [k for k in index.keys() if k not in seen]
        if stale:
            await index.remove_many(stale)
        self._last_id = last_id
        self.stats["rebuilds"] += 1
        log.info("rebuilt the semantic index from redis: %d vectors, %d stale keys dropped", len(seen), len(stale))
        return len(seen)

    async def _adopt_legacy_keys(self) -> None:
        """Versions before Cluster support named the keys `{prefix}vec` and `{prefix}l3log`:
        a Redis they wrote keeps its vectors (RENAMENX, once per store; on Cluster the old
        names, in other slots, cannot be renamed and are left alone)."""
        if self._legacy_checked:
            return
        for old, new in self._legacy_keys:
            async with self._deadline("rebuild"):
                if await self.client.exists(old):
                    with contextlib.suppress(ResponseError):  # CROSSSLOT on Cluster
                        await self.client.renamenx(old, new)
        self._legacy_checked = True

    async def follow(self, index: SemanticIndex, stop: asyncio.Event, *,
                     on_event: EventCallback | None = None) -> None:
        """Apply the stream's changes to `index` until `stop` is set (then return within
        about `block_ms`). Rebuilds first if `rebuild` has not run. Never raises except
        `CancelledError`."""
        backoff = self.backoff_min
        need_rebuild = self._last_id is None
        while not stop.is_set():
            try:
                if need_rebuild:
                    await self.rebuild(index)
                    need_rebuild = False
                start = self._last_id
                assert start is not None
                events = await self._read()
                for entry_id, fields in events:
                    await self._apply(index, fields, on_event)
                    self._last_id = entry_id
                if len(events) >= self.batch and await self._trimmed_after(start):
                    self.stats["gaps"] += 1
                    log.warning("the l3 stream was trimmed past this follower's position; rebuilding")
                    need_rebuild = True
                backoff = self.backoff_min
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the follower outlives any one failure
                self.stats["errors"] += 1
                if isinstance(exc, (LayerError, *REDIS_ERRORS)):
                    log.warning("l3 stream follower: %r; retrying in %.1fs, then rebuilding", exc, backoff)
                else:
                    log.exception("l3 stream follower failed; retrying in %.1fs, then rebuilding", backoff)
                need_rebuild = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self.backoff_max)

    async def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        async with self._deadline("read", extra=self.block_ms / 1000):
            resp = await self.client.xread({self.stream_key: self._last_id}, count=self.batch, block=self.block_ms)
        if not resp:
            return []
        if isinstance(resp, dict):  # RESP3
            return list(resp.get(self.stream_key.encode(), resp.get(self.stream_key, [[]]))[0])
        return list(resp[0][1])

    async def _trimmed_after(self, position: bytes) -> bool:
        """Whether events after `position` may have been trimmed before we read them."""
        async with self._deadline("xinfo"):
            info = await self.client.xinfo_stream(self.stream_key)
        deleted = info.get("max-deleted-entry-id")  # Redis >= 7: exact
        if deleted is not None:
            return _stream_id(deleted) > _stream_id(position)
        first = info.get("first-entry")  # Redis 6: conservative (our position itself trimmed)
        return first is not None and _stream_id(first[0]) > _stream_id(position)

    async def _apply(self, index: SemanticIndex, fields: dict[bytes, bytes],
                     on_event: EventCallback | None) -> None:
        op = fields.get(b"op", b"").decode(errors="replace")
        try:
            if op == "add":
                vec = np.frombuffer(fields[b"vec"], dtype=_VEC_DTYPE).astype(np.float32)
                if vec.shape[0] != index.dim:
                    raise CorruptVector(f"dimension {vec.shape[0]}, index has {index.dim}")
                await index.add(fields[b"key"].decode(), vec, fields[b"partition"].decode())
            elif op == "remove":
                await index.remove(fields[b"key"].decode())
            elif on_event is not None:
                try:
                    on_event(op, {k.decode(errors="replace"): _text(v) for k, v in fields.items() if k != b"op"})
                except Exception:  # noqa: BLE001 - a callback's bug must not stop the follower
                    self.stats["callback_errors"] += 1
                    log.exception("l3 stream on_event callback failed for op %r", op)
                    return
            else:
                self.stats["ignored"] += 1
                return
        except (KeyError, ValueError) as exc:  # CorruptVector, missing fields, bad UTF-8
            self.stats["malformed"] += 1
            log.warning("skipping a malformed l3 stream event (op %r): %r", op, exc)
            return
        self.stats["applied"] += 1

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str, extra: float = 0.0) -> AsyncIterator[None]:
        """A deadline around one Redis call; its failures become `LayerError`."""
        try:
            async with asyncio.timeout(self.timeout + extra):
                yield
        except REDIS_ERRORS as exc:
            raise LayerError(f"vector store {what}: {exc!r}") from exc


def _text(value: bytes) -> str | bytes:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value
