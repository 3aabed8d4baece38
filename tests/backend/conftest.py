"""Backend fixtures: real uvicorn servers in threads (streaming and disconnects need real sockets)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import serving as running_server


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
