"""`BatchingEmbedder`: the async `Embedder` over a blocking backend.

One dedicated worker thread runs the backend, so the event loop never blocks and the
backend is never called concurrently. The worker takes every request queued at the
moment it is free and encodes them in one call: a lone request starts at once (no
batching window), and requests that arrive while a batch runs make up the next one.
A small LRU of text -> vector serves repeats without touching the worker, so a text
embedded for lookup is not embedded again when its answer is stored.

Every `embed` has a deadline (`timeout_s`, queueing included) and raises
`TimeoutError` when it passes; a request abandoned before its batch started is
dropped, not encoded. Backend failures raise `EmbeddingError`.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from embeddings.protocol import EmbeddingError

class Backend(Protocol):
    """A blocking embedder: `encode(texts)` -> float32 (len(texts), dim), rows L2-normalised."""

    model_name: str
    dim: int
    engine: str  # what runs it, for logs and metrics: "torch:cpu", "onnx:int8", ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class _Job:
    """Texts for the worker, and where their vectors go: the caller's asyncio future,
    resolved on its own loop (one `call_soon_threadsafe` wakes the caller)."""

    texts: list[str]  # distinct, not in the LRU when submitted
    future: asyncio.Future  # -> np.ndarray, one row per text; cancelled when its caller gave up
    loop: asyncio.AbstractEventLoop

    def abandoned(self) -> bool:
        """The caller gave up (timed out or cancelled). Read from the worker thread: a stale
        answer only means the job runs and its result is dropped by `_resolve`."""
        return self.future.done()

    def resolve(self, vectors: np.ndarray | None, error: BaseException | None = None) -> None:
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future, vectors, error)
        except RuntimeError:  # its loop is closed: nobody is waiting
            pass


def _resolve(future: asyncio.Future, vectors: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(vectors)


class VectorLRU:
    """Text -> read-only vector, bounded by count. Thread-safe."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        found = {}
        with self._lock:
            for text in texts:
                vector = self._data.get(text)
                if vector is not None:
                    self._data.move_to_end(text)
                    found[text] = vector
        return found

    def set_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self._lock:
            for text, vector in items:
                self._data[text] = vector
                self._data.move_to_end(text)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


class BatchingEmbedder:
    """Implements `embeddings.protocol.Embedder`."""

    def __init__(
        self, backend: Backend, *, timeout_s: float = 2.0, max_batch: int = 64, cache_size: int = 4096,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.backend = backend
        self.model_name = backend.model_name
        self.dim = backend.dim
        self.engine = backend.engine
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self._cache = VectorLRU(cache_size)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"embedder[{self.engine}]", daemon=True)
        self._worker.start()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._closed:
            raise EmbeddingError("embedder is closed")
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        found = self._cache.get_many(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            loop = asyncio.get_running_loop()
            job = _Job(missing, loop.create_future(), loop)
            self._queue.put(job)
            try:
                async with asyncio.timeout(self.timeout_s):  # on expiry job.future is cancelled: dropped
                    vectors = await job.future
            except TimeoutError:
                raise TimeoutError(
                    f"embedding {len(missing)} text(s) took longer than {self.timeout_s}s ({self.engine})"
                ) from None
            found.update(zip(missing, vectors))
        return np.stack([found[t] for t in texts])

    async def aclose(self) -> None:
        """Stop the worker once the requests already queued are done; later calls raise EmbeddingError."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._worker.join, self.timeout_s)

    # -- worker thread -----------------------------------------------------------

    def _run(self) -> None:
        backlog: deque[_Job | None] = deque()
        while True:
            if not backlog:
                backlog.append(self._queue.get())
            while True:  # everything queued right now
                try:
                    backlog.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch: list[_Job] = []
            size = 0
            while backlog and backlog[0] is not None and (not batch or size + len(backlog[0].texts) <= self.max_batch):
                job = backlog.popleft()
                if not job.abandoned():
                    batch.append(job)
                    size += len(job.texts)
            if batch:
                self._encode(batch)
            if backlog and backlog[0] is None:
                for job in backlog:
                    if job is not None:
                        job.resolve(None, EmbeddingError("embedder is closed"))
                return

    def _encode(self, batch: list[_Job]) -> None:
        texts = list(dict.fromkeys(t for job in batch for t in job.texts))
        vectors = self._cache.get_many(texts)  # done by an earlier batch since they were queued
        todo = [t for t in texts if t not in vectors]
        try:
            if todo:
                encoded = np.asarray(self.backend.encode(todo), dtype=np.float32)
                if encoded.shape != (len(todo), self.dim):
                    raise ValueError(f"backend returned shape {encoded.shape}, expected {(len(todo), self.dim)}")
                rows = [row.copy() for row in encoded]  # a view would keep its whole batch alive in the LRU
                for row in rows:
                    row.setflags(write=False)
                self._cache.set_many(zip(todo, rows))
                vectors.update(zip(todo, rows))
        except Exception as exc:
            error = EmbeddingError(f"{self.engine} failed to embed {len(todo)} text(s): {exc!r}")
            error.__cause__ = exc
            for job in batch:
                job.resolve(None, error)
            return
        for job in batch:
            job.resolve(np.stack([vectors[t] for t in job.texts]))
