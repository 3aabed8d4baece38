"""Child processes of a benchmark run: the simulated backend, the proxy, redis-server.

Each is a subprocess on a free loopback port, started in its own session, waited for
(`/healthz` or a TCP connect) and stopped by its own PID: SIGTERM, then SIGKILL. A
`ProcessGroup` stops everything it started, in reverse order, however the run ends.
Output goes to a log file per process under the run's folder.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from cache.redis_server import find_redis_server


class ProcessError(RuntimeError):
    """A child process did not start or died, with the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


class Child:
    """One subprocess with a name, a log file and a readiness probe."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> None:
        self.name, self.argv, self.log_path, self.env, self.cwd = name, argv, log_path, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env or child_env(), cwd=self.cwd, start_new_session=True)
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise ProcessError(f"{self.name} exited ({self.proc.returncode if self.proc else '?'}):\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ProcessError(f"{self.name} not ready at {url} after {timeout_s:.0f}s:\n{self.log_tail()}")

    def wait_tcp(self, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise ProcessError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise ProcessError(f"{self.name} not listening on {port} after {timeout_s:.0f}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, grace_s: float = 10.0) -> None:
        if not self.alive:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class ProcessGroup:
    """Children started for one run; `close()` stops them all (reverse start order)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.started: list[dict] = []  # name and pid of every child stopped by close()

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self.children):
            if child.proc is not None:
                self.started.append({"name": child.name, "pid": child.proc.pid})
            try:
                child.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.kill()
        self.children.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the processes a run needs -------------------------------------------------------
    def backend(self, ttft_ms: float, tokens_per_s: float, timeout_s: float = 60.0) -> str:
        port = free_port()
        child = self.add(Child("backend", [sys.executable, "-m", "proxy.cli", "backend", "--simulate",
                                           "--host", "127.0.0.1", "--port", str(port), "--ttft-ms", str(ttft_ms),
                                           "--tokens-per-s", str(tokens_per_s)],
                               self.log_dir / "backend.log"))
        child.start()
        url = f"http://127.0.0.1:{port}"
        child.wait_http(url + "/healthz", timeout_s)
        return url

    def redis(self, name: str = "redis") -> RedisChild:
        child = RedisChild(self.log_dir / f"{name}.log", self.log_dir / f"{name}-data", name=name)
        self.add(child)
        child.start()
        return child

    def proxy(self, upstream: str, config: dict, *, redis_url: str | None, name: str = "proxy",
              timeout_s: float = 300.0) -> str:
        port = free_port()
        cfg_path = self.log_dir / f"{name}-config.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "proxy.cli", "serve", "--upstream", upstream, "--host", "127.0.0.1",
                "--port", str(port), "--config", str(cfg_path)]
        if redis_url is not None:
            argv += ["--redis-url", redis_url]
        child = self.add(Child(name, argv, self.log_dir / f"{name}.log"))
        child.start()
        url = f"http://127.0.0.1:{port}"
        child.wait_http(url + "/healthz", timeout_s)
        return url


class RedisChild(Child):
    """redis-server on a fixed port (kept across restarts), no persistence."""

    def __init__(self, log_path: Path, data_dir: Path, name: str = "redis") -> None:
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(name, [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(data_dir)], log_path)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        self.wait_tcp(self.port, 15.0)
