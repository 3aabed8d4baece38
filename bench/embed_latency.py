"""Embedding engines compared: latency, throughput, and agreement with torch.

    python -m bench.embed_latency [--pairs PATH] [--n 400] [--queries 200] [--threshold 0.86]

Engines: torch (sentence-transformers), and ONNX Runtime exported once into --cache-dir:
fp32, weight-only int8 (the fallback) and dynamic int8 (the default). Texts: the questions
of --pairs (QQP-style CSV: question1, question2, is_duplicate; default
../shared/data/qqp-val/pairs.csv beside the checkout, when present), else the probe texts.
Single-query latency (tokenise + run + pool, one text per call, in interleaved blocks of
one engine), batch throughput (64 texts a call),
vector agreement with torch (cosine, mean and worst), and on the labelled pairs: each
engine's ROC AUC and how far its pair similarities move from torch's, with the share of
pairs whose side of --threshold changes. Last, the async BatchingEmbedder over the
default engine: one caller, then 16 concurrent callers.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp-val" / "pairs.csv"
ONNX_ENGINES = {  # name -> OnnxBackend.from_model arguments
    "onnx-fp32": {"quantize": False},
    "onnx-int8-weights": {"quantize": True, "weight_only": True},
    "onnx-int8": {"quantize": True},
}


def read_pairs(path: Path, limit: int) -> tuple[list[str], list[str], np.ndarray]:
    first, second, labels = [], [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            first.append(row["question1"])
            second.append(row["question2"])
            labels.append(int(row["is_duplicate"]))
            if len(first) >= limit:
                break
    return first, second, np.array(labels)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1e3)


def single_query_latency(backends: dict, texts: list[str], rounds: int = 4) -> dict[str, list[float]]:
    """Blocks of one engine at a time, the blocks interleaved, so that noise from other
    processes on a shared machine hits every engine alike."""
    samples: dict[str, list[float]] = {name: [] for name in backends}
    per_round = max(1, len(texts) // rounds)
    for start in range(0, len(texts), per_round):
        for name, backend in backends.items():
            for text in texts[start:start + per_round]:
                started = time.perf_counter()
                backend.encode([text])
                samples[name].append(time.perf_counter() - started)
    return samples


def throughput(backend, texts: list[str], batch: int = 64) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        backend.encode(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - started)


async def batcher_figures(backend, texts: list[str]) -> tuple[float, float, float]:
    """(c=1 p50 ms, c=16 texts/s, mean texts per backend call at c=16), with the LRU off."""
    from embeddings.batcher import BatchingEmbedder

    calls = []
    encode = backend.encode

    class Counting:
        model_name, dim, engine = backend.model_name, backend.dim, backend.engine

        def encode(self, batch: list[str]) -> np.ndarray:
            calls.append(len(batch))
            return encode(batch)

    embedder = BatchingEmbedder(Counting(), timeout_s=30, cache_size=0)
    try:
        lat = []
        for text in texts[:100]:
            started = time.perf_counter()
            await embedder.embed([text + " ?"])  # not what single_query_latency saw
            lat.append(time.perf_counter() - started)
        calls.clear()
        pending = list(texts)
        started = time.perf_counter()

        async def caller() -> None:
            while pending:
                await embedder.embed([pending.pop() + " !"])

        await asyncio.gather(*(caller() for _ in range(16)))
        rate = len(texts) / (time.perf_counter() - started)
        return statistics.median(lat) * 1e3, rate, statistics.mean(calls)
    finally:
        await embedder.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS if DEFAULT_PAIRS.exists() else None)
    parser.add_argument("--n", type=int, default=400, help="labelled pairs (texts for agreement: twice that)")
    parser.add_argument("--queries", type=int, default=200, help="single-query calls per engine")
    parser.add_argument("--threshold", type=float, default=0.86, help="similarity threshold for the flip count")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "stratacache-bench-onnx"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, torch and ONNX Runtime")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from embeddings.onnx_backend import PROBE_TEXTS, Agreement, OnnxBackend
    from embeddings.sentence_transformer import SentenceTransformerBackend

    if args.pairs:
        first, second, labels = read_pairs(args.pairs, args.n)
        texts = list(dict.fromkeys(first + second))
    else:
        first = second = labels = None
        texts = PROBE_TEXTS
    print(f"{len(texts)} texts from {args.pairs or 'the probe set'}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; intra-op threads {args.threads}")

    started = time.perf_counter()
    backends = {"torch": SentenceTransformerBackend(device="cpu", threads=args.threads)}
    print(f"torch load {time.perf_counter() - started:.1f}s")
    for name, variant in ONNX_ENGINES.items():
        started = time.perf_counter()
        backends[name] = OnnxBackend.from_model(**variant, cache_dir=args.cache_dir, threads=args.threads)
        print(f"{name} export (first time only) + load {time.perf_counter() - started:.1f}s; "
              f"probe agreement mean {backends[name].agreement.mean:.4f} worst {backends[name].agreement.min:.4f}")

    queries = (texts * (args.queries // len(texts) + 1))[:args.queries]
    latency = single_query_latency(backends, queries)
    vectors = {name: backend.encode(texts) for name, backend in backends.items()}

    header = f"{'engine':<17} {'min ms':>7} {'p50 ms':>7} {'p99 ms':>7} {'texts/s@64':>10} {'cos mean':>9} {'cos worst':>9}"
    if labels is not None:
        header += f" {'AUC':>6} {'|dsim| mean':>11} {'|dsim| max':>10} {'flips@' + str(args.threshold):>11}"
        index = {t: i for i, t in enumerate(texts)}
        a, b = [index[t] for t in first], [index[t] for t in second]
        sims = {name: np.sum(v[a] * v[b], axis=1) for name, v in vectors.items()}
    print()
    print(header)
    for name, backend in backends.items():
        agreement = Agreement.between(vectors[name], vectors["torch"])
        line = (f"{name:<17} {percentile_ms(latency[name], 0):7.2f} {percentile_ms(latency[name], 50):7.2f} {percentile_ms(latency[name], 99):7.2f} "
                f"{throughput(backend, texts):10.0f} {agreement.mean:9.4f} {agreement.min:9.4f}")
        if labels is not None:
            delta = np.abs(sims[name] - sims["torch"])
            flips = np.mean((sims[name] >= args.threshold) != (sims["torch"] >= args.threshold))
            line += (f" {roc_auc(sims[name], labels):6.4f} {delta.mean():11.4f} {delta.max():10.4f}"
                     f" {flips * 100:10.2f}%")
        print(line)

    print()
    for name in ("onnx-int8", "torch"):
        p50, rate, mean_batch = asyncio.run(batcher_figures(backends[name], texts))
        print(f"BatchingEmbedder over {name}: c=1 p50 {p50:.2f} ms; c=16 {rate:.0f} texts/s, "
              f"{mean_batch:.1f} texts per backend call")


if __name__ == "__main__":
    main()
