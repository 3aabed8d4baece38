"""Real servers for proxy tests: the simulated backend and the proxy, each a uvicorn
server on a free loopback port (streaming and disconnects need real sockets)."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import serving


@pytest.fixture(scope="module")
def backend_url() -> Iterator[str]:
    from backend.simulated import create_app

    with serving(create_app(ttft_ms=0, tokens_per_s=0)) as url:
        yield url


def backend_count(url: str) -> int:
    return httpx.get(url + "/stats").json()["requests"]


@pytest.fixture
def make_proxy(tmp_path) -> Callable:
    """`with make_proxy(upstream, **overrides) as url:` a proxy in front of `upstream`.
    L2 is off unless `redis={"url": ...}` is given; L3 is off unless semantic is enabled
    (then an embedder may be passed to share one model between proxies)."""
    from proxy.app import create_app
    from proxy.services import build_services
    from proxy.settings import load_settings

    @contextmanager
    def make(upstream: str, *, embedder=None, clock=time.time, **overrides) -> Iterator[str]:
        overrides.setdefault("semantic", {"enabled": False})
        overrides.setdefault("redis", {"url": ""})
        overrides.setdefault("state_dir", tempfile.mkdtemp(dir=tmp_path))
        settings = load_settings(None, {"upstream": upstream, **overrides})

        async def factory(s):
            return await build_services(s, clock=clock, embedder=embedder)

        with serving(create_app(settings, factory)) as url:
            yield url

    return make


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 embedder, loaded once and shared by every proxy in a test."""
    import asyncio

    from embeddings.loader import EmbedderConfig, load_embedder

    emb = load_embedder(EmbedderConfig(timeout_s=10.0))
    yield emb
    asyncio.run(emb.aclose())


SEMANTIC_ON = {"enabled": True, "threshold": 0.9, "consider_threshold": 0.8, "verify": True}
