"""BatchingEmbedder over fake blocking backends: batching, deadlines, errors, the LRU."""
from __future__ import annotations

import asyncio
import hashlib
import threading

import numpy as np
import pytest

from embeddings.batcher import BatchingEmbedder
from embeddings.protocol import Embedder, EmbeddingError

DIM = 8


def fake_vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeBackend:
    """Records every encode call; `gate` (when given) holds each call until it is set."""

    model_name = "fake"
    dim = DIM
    engine = "fake"

    def __init__(self, gate: threading.Event | None = None, fail: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = gate
        self.fail = fail
        self.started = threading.Event()

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return np.stack([fake_vector(t) for t in texts])


async def started(backend: FakeBackend) -> None:
    assert await asyncio.to_thread(backend.started.wait, 10)


async def queue_up(embedder: BatchingEmbedder, *batches: list[str]) -> list[asyncio.Task]:
    """Start one embed() per batch and let each reach the worker's queue."""
    tasks = [asyncio.create_task(embedder.embed(b)) for b in batches]
    await asyncio.sleep(0)  # each task runs up to its first await, after queueing its job
    return tasks


@pytest.fixture
async def make():
    made: list[BatchingEmbedder] = []

    def factory(backend: FakeBackend, **kw) -> BatchingEmbedder:
        made.append(BatchingEmbedder(backend, **kw))
        return made[-1]

    yield factory
    for e in made:
        if e.backend.gate is not None:
            e.backend.gate.set()
        await e.aclose()


async def test_implements_the_protocol_with_normalised_float32_rows(make):
    embedder = make(FakeBackend())
    assert isinstance(embedder, Embedder)
    assert (embedder.model_name, embedder.dim) == ("fake", DIM)
    out = await embedder.embed(["alpha", "beta"])
    assert out.shape == (2, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[1], fake_vector("beta"))


async def test_empty_input_is_an_empty_array_without_a_backend_call(make):
    backend = FakeBackend()
    out = await make(backend).embed([])
    assert out.shape == (0, DIM) and out.dtype == np.float32
    assert backend.calls == []


async def test_a_lone_request_goes_alone_and_the_ones_queued_behind_a_batch_are_merged(make):
    backend = FakeBackend(gate=threading.Event())
    embedder = make(backend)
    first = asyncio.create_task(embedder.embed(["one"]))
    await started(backend)  # the worker is busy with "one"; the loop is not
    rest = await queue_up(embedder, ["two"], ["three", "four"], ["five"])
    backend.gate.set()
    results = await asyncio.gather(first, *rest)
    assert backend.calls == [["one"], ["two", "three", "four", "five"]]
    np.testing.assert_array_equal(results[2][1], fake_vector("four"))


async def test_batches_hold_at_most_max_batch_texts(make):
    backend = FakeBackend(gate=threading.Event())
    embedder = make(backend, max_batch=2)
    first = asyncio.create_task(embedder.embed(["a"]))
    await started(backend)
    rest = await queue_up(embedder, ["b"], ["c"], ["d"], ["e", "f", "g"])
    backend.gate.set()
    await asyncio.gather(first, *rest)
    assert backend.calls == [["a"], ["b", "c"], ["d"], ["e", "f", "g"]]  # a larger request goes alone


async def test_a_slow_backend_becomes_a_timeout_and_abandoned_requests_are_not_encoded(make):
    backend = FakeBackend(gate=threading.Event())
    embedder = make(backend, timeout_s=0.05)
    with pytest.raises(TimeoutError):
        await embedder.embed(["stuck"])
    with pytest.raises(TimeoutError):
        await embedder.embed(["queued behind it"])
    backend.gate.set()
    embedder.timeout_s = 10
    await embedder.embed(["later"])
    assert backend.calls == [["stuck"], ["later"]]
    await embedder.embed(["stuck"])  # finished after its caller left: the LRU kept it
    assert len(backend.calls) == 2


async def test_backend_errors_become_embedding_errors_and_the_worker_survives(make):
    backend = FakeBackend(fail=RuntimeError("boom"))
    embedder = make(backend)
    with pytest.raises(EmbeddingError, match="boom") as info:
        await embedder.embed(["x"])
    assert isinstance(info.value.__cause__, RuntimeError)
    backend.fail = None
    assert (await embedder.embed(["x"])).shape == (1, DIM)


async def test_a_wrong_shape_from_the_backend_is_an_embedding_error(make):
    class Short(FakeBackend):
        def encode(self, texts):
            return super().encode(texts)[:, :3]

    with pytest.raises(EmbeddingError, match="shape"):
        await make(Short()).embed(["x"])


async def test_repeated_texts_are_embedded_once(make):
    backend = FakeBackend()
    embedder = make(backend)
    out = await embedder.embed(["same", "other", "same"])
    assert backend.calls == [["same", "other"]]
    np.testing.assert_array_equal(out[0], out[2])
    again = await embedder.embed(["other", "same"])  # e.g. lookup, then commit of the same request
    assert len(backend.calls) == 1
    np.testing.assert_array_equal(again[0], out[1])
    again[0] += 1  # callers get their own arrays; the cached vectors stay intact
    np.testing.assert_array_equal((await embedder.embed(["other"]))[0], out[1])


async def test_the_lru_is_bounded(make):
    backend = FakeBackend()
    embedder = make(backend, cache_size=2)
    for text in ["a", "b", "c", "a"]:
        await embedder.embed([text])
    assert backend.calls == [["a"], ["b"], ["c"], ["a"]]


async def test_aclose_finishes_queued_work_then_refuses_new_calls(make):
    backend = FakeBackend(gate=threading.Event())
    embedder = make(backend)
    first = asyncio.create_task(embedder.embed(["a"]))
    await started(backend)
    (second,) = await queue_up(embedder, ["b"])
    closing = asyncio.create_task(embedder.aclose())
    backend.gate.set()
    await closing
    assert (await first).shape == (await second).shape == (1, DIM)
    with pytest.raises(EmbeddingError, match="closed"):
        await embedder.embed(["c"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        BatchingEmbedder(FakeBackend(), timeout_s=0)
    with pytest.raises(ValueError):
        BatchingEmbedder(FakeBackend(), max_batch=0)
