"""Build the configured embedder: `load_embedder(EmbedderConfig(...))`.

Engine "auto": torch on a GPU. On a CPU, ONNX Runtime exported from the same model: the
first of dynamic int8, weight-only int8 and fp32 (fp32 only when `onnx_quantize` is off)
that exports and agrees with torch, falling back to torch with a logged warning when none
does. "torch" and "onnx" force an engine (ONNX: dynamic int8, or fp32 when `onnx_quantize`
is off); a forced ONNX engine that disagrees is kept, with a warning.
Blocking (model load, and the ONNX export the first time): call it at start-up.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

from embeddings.batcher import Backend, BatchingEmbedder
from embeddings.onnx_backend import Agreement, OnnxBackend, OnnxExportError, variant_name
from embeddings.sentence_transformer import SentenceTransformerBackend, default_model_path, resolve_device

log = logging.getLogger(__name__)

# Cosine between ONNX's and torch's vectors for onnx_backend.PROBE_TEXTS, below which
# "auto" does not use an ONNX variant. all-MiniLM-L6-v2, mean/worst: fp32 1.0000/1.0000,
# dynamic int8 0.9989/0.9970, weight-only int8 0.9992/0.9977; plain `quantize_dynamic`
# int8 (refused, not built) 0.9913/0.9737, worst on "ok".
MIN_MEAN_AGREEMENT = 0.99
MIN_WORST_AGREEMENT = 0.98


@dataclass
class EmbedderConfig:
    model_path: str | None = None  # a local sentence-transformers directory; None: bundled all-MiniLM-L6-v2
    engine: Literal["auto", "torch", "onnx"] = "auto"
    device: str = "auto"  # torch only: "auto" (cuda when present), "cpu", "cuda", "cuda:1", ...
    timeout_s: float = 2.0  # deadline of one embed() call, queueing included
    max_batch: int = 64  # texts per backend call
    onnx_quantize: bool = True
    cache_dir: str | None = None  # ONNX exports; None: ~/.cache/stratacache/onnx
    threads: int = 1  # CPU threads per encode call of several texts; the event loop keeps the other cores
    # ONNX: CPU threads for a lone text (a quiet proxy's one lookup); None: min(2, CPU count)
    single_text_threads: int | None = None


def load_embedder(cfg: EmbedderConfig) -> BatchingEmbedder:
    return BatchingEmbedder(load_backend(cfg), timeout_s=cfg.timeout_s, max_batch=cfg.max_batch)


def load_backend(cfg: EmbedderConfig) -> Backend:
    model_path = cfg.model_path or default_model_path()
    if cfg.engine == "torch" or (cfg.engine == "auto" and resolve_device(cfg.device) != "cpu"):
        return _torch(model_path, cfg)
    if cfg.engine == "onnx":
        backend = OnnxBackend.from_model(
            model_path, quantize=cfg.onnx_quantize, cache_dir=cfg.cache_dir, threads=cfg.threads,
            single_text_threads=_single_text_threads(cfg))
        if not agrees(backend.agreement):
            log.warning("%s: %s", backend.engine, _describe(backend.agreement))
        return _chosen(backend)
    variants = [(True, False), (True, True), (False, False)] if cfg.onnx_quantize else [(False, False)]
    for quantize, weight_only in variants:  # dynamic int8, weight-only int8, fp32
        try:
            backend = OnnxBackend.from_model(
                model_path, quantize=quantize, weight_only=weight_only, cache_dir=cfg.cache_dir, threads=cfg.threads,
                single_text_threads=_single_text_threads(cfg))
        except OnnxExportError as exc:
            log.warning("ONNX Runtime unavailable (%s): %s", variant_name(quantize, weight_only), exc)
            continue
        if agrees(backend.agreement):
            return _chosen(backend)
        log.warning("not using %s: %s", backend.engine, _describe(backend.agreement))
    log.warning("embedding with torch on the CPU: no ONNX Runtime variant is usable")
    return _torch(model_path, cfg)


def _single_text_threads(cfg: EmbedderConfig) -> int:
    if cfg.single_text_threads is not None:
        return cfg.single_text_threads
    return max(cfg.threads, min(2, os.cpu_count() or 1))


def agrees(agreement: Agreement) -> bool:
    return agreement.mean >= MIN_MEAN_AGREEMENT and agreement.min >= MIN_WORST_AGREEMENT


def _torch(model_path: str, cfg: EmbedderConfig) -> SentenceTransformerBackend:
    return _chosen(SentenceTransformerBackend(model_path, device=cfg.device, threads=cfg.threads))


def _chosen(backend: Backend) -> Backend:
    log.info("embedding with %s on %s (dim %d)", backend.model_name, backend.engine, backend.dim)
    return backend


def _describe(agreement: Agreement) -> str:
    return (f"its vectors agree with torch's to cosine mean {agreement.mean:.4f}, worst {agreement.min:.4f} "
            f"(wanted {MIN_MEAN_AGREEMENT}, {MIN_WORST_AGREEMENT})")
