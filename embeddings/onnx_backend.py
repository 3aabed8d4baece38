"""An ONNX Runtime embedding backend, exported locally from the same sentence-transformers model.

The export (`embeddings.onnx_export`) runs once per model and is cached in
`<cache_dir>/<model fingerprint>/`:

    model.onnx               the transformer, token embeddings out (fp32, ORT transformer fusions)
    model.int8.onnx          the same, dynamic int8 with outlier handling (see quantize_model)
    model.int8-weights.onnx  the same, weight-only int8 (see quantize_weights); written only
                             when asked for: the fallback where model.int8.onnx disagrees
    tokenizer.json           the model's fast tokenizer, truncating where sentence-transformers does
    pipeline.json            model name, pooling, dimension, maximum tokens
    probe.npy                torch's vectors for PROBE_TEXTS

Pooling and normalisation run in numpy. Loading a finished export needs only onnxruntime,
tokenizers and numpy. Every load re-embeds PROBE_TEXTS and compares them with torch's
vectors (`OnnxBackend.agreement`), so a stale or broken export is caught at start-up, not
by a drop in hit rate.

One 12-word question (about 16 tokens) on one thread of this project's 2-core AMD EPYC VM,
min / median ms: fp32 4.3 / 5.3, weight-only int8 2.6 / 3.6, dynamic int8 1.3 / 2.0, all
up to 1.5x slower while the host is busy (`python -m bench.embed_latency` compares them);
dynamic int8 on two threads 1.0 / 1.2-1.5. ORT's run is nearly all of it; tokenising takes
about 0.03 ms.

Threads. A lone text (the common case: one request's lookup while the proxy is quiet) runs
on `single_text_threads`, which on a 2-core machine means both cores; those threads spin
only while a run is on (`session.force_spinning_stop`), so between runs they leave the
cores to the event loop. A batch of several texts (requests queued while a run was on: the
proxy is busy) runs on `threads`, one by default, so the event loop keeps a core.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embeddings.protocol import EmbeddingError
from embeddings.sentence_transformer import default_model_path


VARIANT_FILES = {  # engine "onnx:<variant>" -> its model file in the export
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "int8-weights": "model.int8-weights.onnx",
}
FP32_FILE = VARIANT_FILES["fp32"]
PIPELINE_FILE = "pipeline.json"  # written last: its presence marks a finished export
# ORT re-fuses Add + LayerNormalization into SkipLayerNormalization when a session loads,
# and its CPU kernel for that is slow: 30-40 us for 16 tokens, against about 5 for the two
# ops (12 of them a query). The export leaves them unfused; every session keeps them so.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]

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


def variant_name(quantized: bool, weight_only: bool = False) -> str:
    """"int8", "int8-weights" or "fp32": the engine is "onnx:" + this, its file VARIANT_FILES[this]."""
    if weight_only and not quantized:
        raise ValueError("weight_only is an int8 variant: it needs quantized=True")
    return ("int8-weights" if weight_only else "int8") if quantized else "fp32"


class OnnxBackend:
    """`encode(texts)` -> float32 (n, dim), rows L2-normalised. Blocking; one caller at a time.

    `quantized`: dynamic int8 (model.int8.onnx), or with `weight_only` the weight-only int8
    (model.int8-weights.onnx); else fp32. Each text is its own ONNX run: dynamic int8
    quantises a whole activation tensor with one scale, so in a padded batch a text's vector
    would depend on its neighbours; and without padding one at a time is also the faster
    way on a CPU (mixed-length questions, one thread: 565 texts/s against 400 in padded
    chunks of 32 with dynamic int8, 196 against 146 with fp32)."""

    def __init__(
        self, export_dir: Path, *, quantized: bool = True, weight_only: bool = False, threads: int = 1,
        single_text_threads: int | None = None,
    ) -> None:
        """`threads`: intra-op threads for a batch of texts; `single_text_threads` for a lone
        text (None: the same as `threads`)."""
        from tokenizers import Tokenizer

        variant = variant_name(quantized, weight_only)
        pipeline = json.loads((export_dir / PIPELINE_FILE).read_text())
        self.model_name: str = pipeline["model_name"]
        self.dim: int = pipeline["dim"]
        self.engine = f"onnx:{variant}"
        self._pooling: str = pipeline["pooling"]
        self._tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        model = str(export_dir / VARIANT_FILES[variant])
        self._session = make_session(model, threads)
        lone = single_text_threads or threads
        self._lone_session = self._session if lone == threads else make_session(model, lone)
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise OnnxExportError(f"exported model asks for unknown inputs {sorted(unknown)}")
        # Also the warm-up: the first run of a session is several times slower than the next.
        probe = np.load(export_dir / "probe.npy")
        self.agreement = Agreement.between(self.encode(PROBE_TEXTS), probe)
        if self._lone_session is not self._session:  # warm it too; the worse agreement counts
            lone = Agreement.between(np.concatenate([self.encode([t]) for t in PROBE_TEXTS]), probe)
            self.agreement = Agreement(min(self.agreement.mean, lone.mean), min(self.agreement.min, lone.min))

    @classmethod
    def from_model(
        cls, model_path: str | None = None, *, quantize: bool = True, weight_only: bool = False,
        cache_dir: str | Path | None = None, threads: int = 1, single_text_threads: int | None = None,
    ) -> OnnxBackend:
        """Export `model_path` (default: the bundled all-MiniLM-L6-v2) once, then load it."""
        variant_name(quantize, weight_only)  # a bad combination is a ValueError, not an export error
        path = Path(model_path or default_model_path())
        from embeddings.onnx_export import default_cache_dir, ensure_export

        try:
            export_dir = ensure_export(
                path, Path(cache_dir) if cache_dir else default_cache_dir(), quantize=quantize, weight_only=weight_only)
            return cls(export_dir, quantized=quantize, weight_only=weight_only, threads=threads,
                       single_text_threads=single_text_threads)
        except OnnxExportError:
            raise
        except Exception as exc:
            raise OnnxExportError(f"ONNX export or load of {path} failed: {exc!r}") from exc

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        session = self._lone_session if len(texts) == 1 else self._session
        for row, text in enumerate(texts):
            # `encode`, not `encode_batch`: the batch call hands even one text to the
            # tokenizer's own thread pool, whose threads then spin against ORT and the loop.
            hidden = session.run(None, model_inputs(self._tokenizer.encode(text), self._inputs))[0][0]
            pooled = hidden[0] if self._pooling == "cls" else hidden.mean(axis=0)
            out[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out


def make_session(model: str | bytes, threads: int):
    """An ORT CPU session for one caller at a time, with DISABLED_OPTIMIZERS off. With more
    than one thread, the pool's threads spin between the ops of a run (waking a sleeping
    thread per op costs more than the op) and stop spinning when the run returns."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        model, options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)


def model_inputs(encoding, inputs: list[str]) -> dict[str, np.ndarray]:
    """One unpadded text's model inputs."""
    ids = np.array([encoding.ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}
    return {name: feeds[name] for name in inputs}
