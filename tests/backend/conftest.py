"""A real uvicorn server in a thread (streaming and disconnects need real sockets)."""
from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

# pytest puts tests/ on sys.path, not the repo root; tests/backend/ would then shadow the
# `backend` package as a namespace package. Regular packages win once the root is there.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields the base URL (no /v1)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def serve_app():
    """`with serve_app(app) as base_url:` runs an ASGI app on a real loopback socket."""
    return running_server


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """A simulated backend without delays: base URL of its OpenAI API (ends in /v1)."""
    from backend.simulated import create_app

    with running_server(create_app(ttft_ms=0, tokens_per_s=0)) as base:
        yield base + "/v1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random causal LM built offline (backend.tiny_model), shared by the session."""
    from backend.tiny_model import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(str(path))
    return str(path)
