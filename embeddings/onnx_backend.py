"""An ONNX Runtime embedding backend, exported locally from the same sentence-transformers model.

The export runs once per model and is cached in `<cache_dir>/<model fingerprint>/`:

    model.onnx        the transformer, token embeddings out (fp32, ORT transformer fusions)
    model.int8.onnx   the same, weight-only int8 (see quantize_model)
    tokenizer.json    the model's fast tokenizer, truncating where sentence-transformers does
    pipeline.json     model name, pooling, dimension, pad id
    probe.npy         torch's vectors for PROBE_TEXTS

Pooling and normalisation run in numpy. Exporting needs torch, transformers and `onnx`,
quantising also `onnx_ir`; loading a finished export needs only onnxruntime, tokenizers
and numpy. Every load re-embeds PROBE_TEXTS and compares them with torch's vectors
(`OnnxBackend.agreement`), so a stale or broken export is caught at start-up, not by a
drop in hit rate.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embeddings.protocol import EmbeddingError
from embeddings.sentence_transformer import default_model_path, model_name_for

log = logging.getLogger(__name__)

EXPORT_RECIPE = 2  # bump when the export steps change, so that old exports are not reused
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PIPELINE_FILE = "pipeline.json"  # written last: its presence marks a finished export
CHUNK = 32  # texts per ONNX run, sorted by length so that one long text pads few others

PROBE_TEXTS = [
    "What is the capital of France?",
    "What's the capital city of France?",
    "How do I reset my password?",
    "Delete it.",
    "Can you expand on that?",
    "How do tides work?",
    "Explain the difference between TCP and UDP in two sentences.",
    "Write a haiku about autumn leaves.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "¿Dónde está la biblioteca más cercana?",
    "Ich möchte einen Tisch für zwei Personen reservieren.",
    "I love this product!!! 😍 Would buy again.",
    "The mitochondria is the powerhouse of the cell.",
    "",
    "ok",
    " ".join(["The quick brown fox jumps over the lazy dog while the cat watches."] * 30),
]


class OnnxExportError(EmbeddingError):
    """The model could not be exported to, or loaded in, ONNX Runtime."""


@dataclass(frozen=True)
class Agreement:
    """Row-wise cosine similarity between two sets of L2-normalised vectors."""

    mean: float
    min: float

    @classmethod
    def between(cls, a: np.ndarray, b: np.ndarray) -> Agreement:
        cosines = np.sum(a * b, axis=1)
        return cls(mean=float(cosines.mean()), min=float(cosines.min()))


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stratacache" / "onnx"


def model_fingerprint(model_path: Path) -> str:
    """Names the export: the recipe, the model's location and its files' names, sizes and mtimes."""
    model_path = model_path.resolve()
    digest = hashlib.sha256(f"recipe {EXPORT_RECIPE}\n{model_path}\n".encode())
    for file in sorted(p for p in model_path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(model_path)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class OnnxBackend:
    """`encode(texts)` -> float32 (n, dim), rows L2-normalised. Blocking; one caller at a time."""

    def __init__(self, export_dir: Path, *, quantized: bool = True, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        pipeline = json.loads((export_dir / PIPELINE_FILE).read_text())
        self.model_name: str = pipeline["model_name"]
        self.dim: int = pipeline["dim"]
        self.engine = "onnx:int8" if quantized else "onnx:fp32"
        self._pooling: str = pipeline["pooling"]
        self._pad_id: int = pipeline["pad_id"]
        self._tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        self._tokenizer.no_padding()  # padded per chunk in _run
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(export_dir / (INT8_FILE if quantized else FP32_FILE)), options,
            providers=["CPUExecutionProvider"],
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise OnnxExportError(f"exported model asks for unknown inputs {sorted(unknown)}")
        # Also the warm-up: the first run of a session is several times slower than the next.
        self.agreement = Agreement.between(self.encode(PROBE_TEXTS), np.load(export_dir / "probe.npy"))

    @classmethod
    def from_model(
        cls, model_path: str | None = None, *, quantize: bool = True,
        cache_dir: str | Path | None = None, threads: int = 1,
    ) -> OnnxBackend:
        """Export `model_path` (default: the bundled all-MiniLM-L6-v2) once, then load it."""
        path = Path(model_path or default_model_path())
        try:
            export_dir = ensure_export(path, Path(cache_dir) if cache_dir else default_cache_dir(), quantize=quantize)
            return cls(export_dir, quantized=quantize, threads=threads)
        except OnnxExportError:
            raise
        except Exception as exc:
            raise OnnxExportError(f"ONNX export or load of {path} failed: {exc!r}") from exc

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(encodings), self.dim), dtype=np.float32)
        for start in range(0, len(order), CHUNK):
            rows = order[start:start + CHUNK]
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        type_ids = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
            type_ids[row, :len(e.ids)] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
        hidden = self._session.run(None, {name: feeds[name] for name in self._inputs})[0]
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def ensure_export(model_path: Path, cache_dir: Path, *, quantize: bool) -> Path:
    """The export directory for `model_path`, exporting what is missing.

    Safe against a concurrent export of the same model by another process: each
    writes into a private temporary name and renames it into place."""
    final = cache_dir / model_fingerprint(model_path)
    if not (final / PIPELINE_FILE).exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
        try:
            started = time.monotonic()
            log.info("exporting %s to ONNX in %s (once per model)", model_path, final)
            export_model(model_path, staging)
            try:
                staging.rename(final)
            except OSError:
                if not (final / PIPELINE_FILE).exists():  # not a concurrent export that got there first
                    raise
            log.info("ONNX export done in %.1fs", time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if quantize and not (final / INT8_FILE).exists():
        staged = final / f".{INT8_FILE}.{os.getpid()}.onnx"
        try:
            quantize_model(final / FP32_FILE, staged)
            staged.replace(final / INT8_FILE)
        finally:
            staged.unlink(missing_ok=True)
    return final


def export_model(model_path: Path, out_dir: Path) -> None:
    """Write model.onnx, tokenizer.json, probe.npy and pipeline.json for `model_path` into `out_dir`."""
    _require("onnx")  # before the seconds of loading torch models
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    pooling = _pooling_mode(model_path)
    reference = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    probe = reference.encode(PROBE_TEXTS, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    max_length = int(reference.max_seq_length)
    del reference

    hf_tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    if not hf_tokenizer.is_fast:
        raise OnnxExportError(f"{model_path} has no fast tokenizer (tokenizer.json)")
    sample = hf_tokenizer(["a short sentence", "and a slightly longer sentence"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    tokenizer = hf_tokenizer.backend_tokenizer
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()

    # Eager attention traces to plain ops that ORT's transformer optimizer fuses; sdpa does not.
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager", local_files_only=True).eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors))).last_hidden_state

    traced = out_dir / "traced.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(
            TokenEmbeddings(), tuple(sample[n] for n in names), str(traced),
            input_names=names, output_names=["token_embeddings"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "token_embeddings"]},
            opset_version=17, dynamo=False,
        )
    _fuse(traced, out_dir / FP32_FILE, model.config)
    traced.unlink()

    tokenizer.save(str(out_dir / "tokenizer.json"))
    np.save(out_dir / "probe.npy", probe.astype(np.float32))
    (out_dir / PIPELINE_FILE).write_text(json.dumps({
        "model_name": model_name_for(str(model_path)), "dim": int(probe.shape[1]),
        "pooling": pooling, "pad_id": int(hf_tokenizer.pad_token_id or 0), "max_length": max_length,
    }, indent=1))


def quantize_model(fp32_path: Path, out_path: Path) -> None:
    """Weight-only int8: each MatMul's weights in blocks of 128 with their own scale,
    multiplied with int8-quantised activation blocks (MatMulNBits, accuracy level 4).

    Not `quantize_dynamic`: its one activation scale per tensor is set by BERT's outlier
    channels, which moves short texts' vectors to cosine 0.95-0.97 of torch's ("thanks",
    "ok"); per-block scales keep every probe text above 0.997, at about 1.5x the latency."""
    _require("onnx", "onnx_ir")
    import onnx

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:  # that module calls logging.basicConfig(level=INFO) on import: undo it
        root.handlers[:] = handlers
        root.setLevel(level)

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32_path)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_path))


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxExportError(f"exporting needs the Python package(s) {', '.join(missing)}")


def _fuse(traced: Path, out_path: Path, config) -> None:
    """ORT's transformer fusions (attention, layer norm, gelu) where it knows the architecture."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    if config.model_type not in MODEL_TYPES:
        shutil.copyfile(traced, out_path)
        return
    fused = optimize_model(
        str(traced), model_type=config.model_type, num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size, opt_level=1, use_gpu=False,
    )
    fused.save_model_to_file(str(out_path))


def _pooling_mode(model_path: Path) -> str:
    """"mean" or "cls", read from the sentence-transformers module list; anything else is refused."""
    modules_file = model_path / "modules.json"
    if not modules_file.exists():
        return "mean"  # what sentence-transformers puts on a plain transformer
    modules = json.loads(modules_file.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or modules[0].get("path", "") != "" or set(kinds[2:]) - {"Normalize"}:
        raise OnnxExportError(f"cannot export a {' -> '.join(kinds)} pipeline (Transformer -> Pooling [-> Normalize] only)")
    config = json.loads((model_path / modules[1]["path"] / "config.json").read_text())
    mode = config.get("pooling_mode")
    if mode is None:
        on = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
        mode = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(on[0]) if len(on) == 1 else None
    if mode not in ("mean", "cls"):
        raise OnnxExportError(f"cannot export pooling {config} (mean or cls only)")
    return mode
