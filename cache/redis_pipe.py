"""One pipelined Redis connection for the request path's small commands, on hiredis.

redis-py's asyncio client takes a connection from its pool for every command, checks
it for stray bytes, and gives it back: that costs more than the round trip itself on
an L2 hit (measured in bench/hit_latency.py: an L2 hit at x1.6 of the floor through the
pool, x1.35 through this). Here every command is written at once on one socket and
Redis answers a connection's commands in the order they were sent, so concurrent
lookups share the socket and none waits for a pool slot. The protocol parsing is
hiredis's (the parser redis-py itself uses); replies and errors are redis-py's types.

Only the hot commands go through it (L2 GET, the coalescing lock); everything else
(writes in bulk, scans, scripts, pub/sub) stays on redis-py. It speaks to `redis://`
and `unix://` URLs; for anything else (TLS) `RedisPipe.supports` is False and the
caller keeps redis-py.

Failure handling:
- a caller that gives up (its deadline) leaves its slot in the queue; the reply is
  read and dropped when it comes, so the replies after it still match their callers;
- when the oldest command has waited `stall_s` (Redis hung, or the peer vanished
  without a FIN) or `max_pending` commands are queued, the connection is dropped and
  every waiting caller gets redis-py's ConnectionError;
- a lost connection fails its waiting callers; the next command reconnects.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

Arg = bytes | str | int | float


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.abort(RedisConnectionError("unexpected reply from redis"))
                return
            fut, _ = self.waiting.popleft()
            if not fut.done():  # done: its caller gave up
                if isinstance(reply, ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"redis connection lost: {exc or 'closed by server'}"))

    def abort(self, error: Exception) -> None:
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: Exception) -> None:
        self.lost = True
        while self.waiting:
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)

    @property
    def usable(self) -> bool:
        """False once lost, or while the transport is closing (the server's EOF arrives
        before connection_lost): a command written then would wait for nothing."""
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, now: float) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((fut, now))
        self.transport.write(data)  # type: ignore[union-attr]
        return fut


class RedisPipe:
    def __init__(self, *, host: str | None = None, port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, connect_timeout_s: float = 1.0,
                 stall_s: float = 2.0, max_pending: int = 10_000) -> None:
        self.host, self.port, self.path = host, port, path
        self.db, self.username, self.password = db, username, password
        self.connect_timeout_s = connect_timeout_s
        self.stall_s = stall_s
        self.max_pending = max_pending
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task | None = None
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        return url.startswith(("redis://", "unix://"))

    @classmethod
    def from_url(cls, url: str, *, connect_timeout_s: float, stall_s: float = 2.0) -> "RedisPipe":
        if not cls.supports(url):
            raise ValueError(f"RedisPipe speaks redis:// and unix:// only, not {url.split(':', 1)[0]}://")
        kw: dict[str, Any] = parse_url(url)
        return cls(host=kw.get("host", "localhost") if "path" not in kw else None, port=int(kw.get("port", 6379)),
                   path=kw.get("path"), db=int(kw.get("db") or 0), username=kw.get("username"),
                   password=kw.get("password"), connect_timeout_s=connect_timeout_s, stall_s=stall_s)

    async def execute(self, *args: Arg) -> Any:
        """Send one command and await its reply. Raises redis-py's ConnectionError or
        ResponseError (both RedisError); the caller sets the deadline (asyncio.timeout)."""
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._connect()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if conn.waiting and (now - conn.waiting[0][1] > self.stall_s or len(conn.waiting) >= self.max_pending):
            conn.abort(RedisConnectionError(f"redis stalled: {len(conn.waiting)} commands waiting, the oldest "
                                       f"{now - conn.waiting[0][1]:.1f}s"))
            conn = await self._connect()
        return await conn.send(pack(args), now)

    async def _connect(self) -> _Connection:
        """The live connection, opening one if needed; concurrent callers share one attempt."""
        if self._closed:
            raise RedisConnectionError("redis pipe is closed")
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.ensure_future(self._open())
            task.add_done_callback(self._opened)
        return await asyncio.shield(task)  # a caller's deadline does not cancel the others' attempt

    def _opened(self, task: asyncio.Task) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every caller gave up before it ended

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.path is not None:
                    _, conn = await loop.create_unix_connection(_Connection, self.path)
                else:
                    _, conn = await loop.create_connection(_Connection, self.host, self.port)
                await self._handshake(conn)
        except BaseException as exc:
            if conn is not None:
                conn.abort(RedisConnectionError("redis connect abandoned"))
            if isinstance(exc, (OSError, TimeoutError)):
                raise RedisConnectionError(f"redis connect failed: {type(exc).__name__}: {exc}") from exc
            raise
        self._conn = conn
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        now = asyncio.get_running_loop().time()
        if self.password is not None:
            auth = (b"AUTH", self.username, self.password) if self.username else (b"AUTH", self.password)
            try:
                await conn.send(pack(auth), now)
            except ResponseError as exc:
                raise AuthenticationError(f"redis AUTH failed: {exc}") from exc
        if self.db:
            try:
                await conn.send(pack((b"SELECT", self.db)), now)
            except ResponseError as exc:
                raise RedisConnectionError(f"redis SELECT {self.db} failed: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.abort(RedisConnectionError("redis pipe is closed"))
            self._conn = None
