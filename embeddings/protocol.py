"""The Embedder protocol.

`embed(texts)` returns a float32 array of shape (len(texts), dim) whose rows are
L2-normalised, so an inner product is a cosine similarity. It raises
`EmbeddingError` (or `TimeoutError` when its deadline passes); it never returns
a partial or empty result in place of an error.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class EmbeddingError(RuntimeError):
    """The embedder could not produce vectors."""


@runtime_checkable
class Embedder(Protocol):
    model_name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aclose(self) -> None: ...
