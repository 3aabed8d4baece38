"""redis-py clients from a URL: a standalone server, or a master found through Redis Sentinel.

    redis://[[user]:password@]host[:port][/db]        standalone (also rediss:// and unix://)
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=...]

With Sentinel the client asks the sentinels for the service's master, and again whenever
its connection to it fails or the server it reaches answers as a replica (after a
failover): redis-py's `SentinelConnectionPool` does that, so every user of the client (L2,
the coalescing lock, pub/sub, the vector stream) follows the master without a restart.
The URL's credentials are the data nodes'; `sentinel_password` authenticates to the
sentinels when they have one. Redis Cluster is not supported.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"


class RedisURLError(ValueError):
    """A Redis URL this proxy cannot use: says what is wrong with it."""


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        parts = urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            raise RedisURLError(f"not a {SENTINEL_SCHEME}:// URL: {parts.scheme}://")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
        sentinels = []
        for hostport in filter(None, hosts.split(",")):
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                raise RedisURLError(f"sentinel address {hostport!r} is not host:port")
            sentinels.append((host.strip("[]"), int(port)))
        if not sentinels:
            raise RedisURLError("a redis+sentinel:// URL names at least one sentinel host:port")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise RedisURLError("a redis+sentinel:// URL ends in /<service name>[/<db>]")
        if len(path) == 2 and not path[1].isdigit():
            raise RedisURLError(f"database {path[1]!r} is not a number")
        query = parse_qs(parts.query)
        unknown = set(query) - {"sentinel_password"}
        if unknown:
            raise RedisURLError(f"unknown redis+sentinel:// option(s): {', '.join(sorted(unknown))}")
        return cls(sentinels=tuple(sentinels), service=path[0], db=int(path[1]) if len(path) == 2 else 0,
                   username=unquote(username) or None, password=unquote(password) or None,
                   sentinel_password=query.get("sentinel_password", [None])[0])


class _SentinelManagedRedis(aioredis.Redis):
    """The master's client; closing it also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def make_client(url: str, timeout_s: float) -> aioredis.Redis:
    """A pooled asyncio client whose every socket operation has `timeout_s`. Raises
    RedisURLError for a malformed Sentinel URL (redis-py's ValueError for the others)."""
    common = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False,
                  health_check_interval=30, max_connections=256)
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return aioredis.Redis.from_url(url, **common)
    spec = SentinelURL.parse(url)
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs={
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "password": spec.sentinel_password})
    return sentinel.master_for(spec.service, redis_class=_SentinelManagedRedis, db=spec.db, username=spec.username,
                               password=spec.password, **common)
