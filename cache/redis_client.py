"""redis-py clients from a URL: a standalone server, a master found through Redis Sentinel,
or a Redis Cluster.

    redis://[[user]:password@]host[:port][/db]        standalone (also rediss:// and unix://)
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=...]
    redis+cluster://[[user]:password@]host:port[,host:port...][/0]

With Sentinel the client asks the sentinels for the service's master, and again whenever
its connection to it fails or the server it reaches answers as a replica (after a
failover): redis-py's `SentinelConnectionPool` does that, so every user of the client (L2,
the coalescing lock, pub/sub, the vector stream) follows the master without a restart.
The URL's credentials are the data nodes'; `sentinel_password` authenticates to the
sentinels when they have one.

With Cluster the URL lists seed nodes (one is enough; more survive one being down at
start): redis-py's `RedisCluster` reads the slot map from them, sends each command to the
master owning its key's slot, and follows MOVED and ASK redirections through resharding
and failovers. Cluster has database 0 only. What this proxy keeps in Redis is laid out for
it: an entry, a lock or an ack set is one key, the pipelined existence checks are split
by node, the vector hash and its stream share a hash tag (`cache.vector_store`), and
pub/sub meets on the node owning the channel's slot, so PUBLISH counts every subscriber.
The few whole-deployment reads go through `scan_keys` and `used_memory`, which visit
every master.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME, CLUSTER_SCHEME)

Client = aioredis.Redis | RedisCluster

REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError,
                AttributeError, TypeError, RuntimeError, KeyError, IndexError)
"""What a Redis call can fail with: a server or connection error, a socket error, a
deadline, a cluster client that cannot reach any node or finds a slot unserved
(`RedisClusterException` is not a `RedisError`), and what redis-py's asyncio cluster
client lets escape while a dead node's connections are torn down under concurrent calls:
AttributeError or TypeError on a connection whose writer went away mid-call, RuntimeError
from a closed transport, KeyError for a slot missing from its map (seen here with a
master killed under load; redis-py issues 3546, 3815, 3835). Catch it only around calls
to a Redis client, where any of these means the call failed."""


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
        parts, sentinels, username, password = _split_multi_host(url, SENTINEL_SCHEME, "sentinel")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise RedisURLError("a redis+sentinel:// URL ends in /<service name>[/<db>]")
        if len(path) == 2 and not path[1].isdigit():
            raise RedisURLError(f"database {path[1]!r} is not a number")
        query = parse_qs(parts.query)
        unknown = set(query) - {"sentinel_password"}
        if unknown:
            raise RedisURLError(f"unknown redis+sentinel:// option(s): {', '.join(sorted(unknown))}")
        return cls(sentinels=sentinels, service=path[0], db=int(path[1]) if len(path) == 2 else 0,
                   username=username, password=password,
                   sentinel_password=query.get("sentinel_password", [None])[0])


@dataclass(frozen=True)
class ClusterURL:
    nodes: tuple[tuple[str, int], ...]  # seed nodes: the client reads the slot map from them
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        parts, nodes, username, password = _split_multi_host(url, CLUSTER_SCHEME, "cluster node")
        if parts.path.strip("/") not in ("", "0"):
            raise RedisURLError(f"Redis Cluster has database 0 only, not {parts.path.strip('/')!r}")
        if parts.query:
            raise RedisURLError(f"unknown redis+cluster:// option(s): {parts.query}")
        return cls(nodes=nodes, username=username, password=password)


def _split_multi_host(url: str, scheme: str, what: str):
    """(urlsplit parts, ((host, port), ...), username, password) of a URL naming several hosts."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise RedisURLError(f"not a {scheme}:// URL: {parts.scheme}://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    addresses = []
    for hostport in filter(None, hosts.split(",")):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise RedisURLError(f"{what} address {hostport!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise RedisURLError(f"a {scheme}:// URL names at least one {what} host:port")
    return parts, tuple(addresses), unquote(username) or None, unquote(password) or None


def validate_url(url: str) -> None:
    """Raises RedisURLError (a ValueError) for a URL `make_client` cannot use."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        SentinelURL.parse(url)
    elif scheme == CLUSTER_SCHEME:
        ClusterURL.parse(url)
    elif scheme not in SCHEMES:
        raise RedisURLError(f"unsupported Redis URL scheme {scheme + '://' if scheme else url!r}: use "
                            f"{', '.join(s + '://' for s in SCHEMES)}")


class _SentinelManagedRedis(aioredis.Redis):
    """The master's client; closing it also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def make_client(url: str, timeout_s: float) -> Client:
    """A pooled asyncio client whose every socket operation has `timeout_s`. Raises
    RedisURLError for a malformed Sentinel or Cluster URL (redis-py's ValueError for the
    others). A cluster client connects on its first command, so a cluster that is down at
    start costs misses, not the start."""
    common = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30,
                  max_connections=256)
    if url.startswith(CLUSTER_SCHEME + "://"):
        cluster = ClusterURL.parse(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.nodes], username=cluster.username,
                            password=cluster.password, **common)
    common["retry_on_timeout"] = False
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return aioredis.Redis.from_url(url, **common)
    spec = SentinelURL.parse(url)
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs={
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "password": spec.sentinel_password})
    return sentinel.master_for(spec.service, redis_class=_SentinelManagedRedis, db=spec.db, username=spec.username,
                               password=spec.password, **common)


def connection_kwargs(client: Client) -> dict[str, Any]:
    """The options the client's connections are made with (socket_timeout, decode_responses, ...)."""
    if isinstance(client, RedisCluster):
        return client.get_connection_kwargs()
    return getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})


async def scan_keys(client: Client, match: str, count: int = 500) -> AsyncIterator[bytes | str]:
    """Every key matching `match`, on every master of a cluster. A key may come twice (SCAN's
    guarantee); one that exists throughout comes at least once."""
    async with contextlib.aclosing(client.scan_iter(match=match, count=count)) as keys:
        async for key in keys:
            yield key


async def open_pubsub(client: Client) -> Any:
    """A PubSub skipping subscribe confirmations. A cluster client reads its slot map first:
    its PubSub picks the node owning the channel's slot from that map."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client.pubsub(ignore_subscribe_messages=True)


async def used_memory(client: Client) -> int:
    """Bytes used by the server, or by all of a cluster's masters together."""
    if isinstance(client, RedisCluster):
        per_node = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return sum(int(info.get("used_memory", 0)) for info in per_node.values())
    return int((await client.info("memory")).get("used_memory", 0))
