"""How the L3 index scales in one process: N random normalised vectors in one partition.

    python -m bench.index_scale --n 1000000 --dim 384

Builds the index the proxy uses (`SemanticIndex`: Flat, switched to HNSW past `flat_max`)
and, for comparison, an all-Flat one, through the public async API. Reports add
throughput, resident memory, search latency p50/p99 (k=4 by default, one query at a time,
including the hop to a worker thread) and recall@1 of HNSW against exact Flat search on
queries that are perturbed stored vectors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np

from cache.semantic_index import SemanticIndex

PARTITION = "bench"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def faiss_bytes(index: SemanticIndex) -> int:
    """Bytes FAISS holds for the bench partition: vectors, HNSW graph, id maps."""
    return index.memory_bytes(PARTITION)


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def random_unit(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        part = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        x[s:s + len(part)] = part
    return x


async def build(index: SemanticIndex, x: np.ndarray, batch: int, label: str) -> dict:
    rss0, t0 = rss_bytes(), time.perf_counter()
    for s in range(0, len(x), batch):
        e = min(s + batch, len(x))
        await index.add_many([f"k{i}" for i in range(s, e)], x[s:e], PARTITION)
        if (e // batch) % max(1, 100_000 // batch) == 0 or e == len(x):
            progress(f"{label}: {e:,} added, {time.perf_counter() - t0:.1f}s, kind={index.kind(PARTITION)}")
    seconds = time.perf_counter() - t0
    return {"kind": index.kind(PARTITION), "build_s": round(seconds, 2), "adds_per_s": round(len(x) / seconds),
            "faiss_mib": round(faiss_bytes(index) / 2**20), "rss_delta_mib": round((rss_bytes() - rss0) / 2**20)}


async def latencies(index: SemanticIndex, queries: np.ndarray, k: int) -> tuple[list[str], dict]:
    for q in queries[:10]:  # warm-up
        await index.search(q, PARTITION, k)
    times, top1 = [], []
    for q in queries:
        t = time.perf_counter()
        hits = await index.search(q, PARTITION, k)
        times.append(time.perf_counter() - t)
        top1.append(hits[0][0] if hits else "")
    ms = np.array(times) * 1000
    return top1, {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


async def main(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    progress(f"generating {args.n:,} x {args.dim} vectors")
    x = random_unit(rng, args.n, args.dim)
    src = rng.choice(args.n, size=args.queries, replace=False)
    noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * (args.noise / np.sqrt(args.dim))
    queries = x[src] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    src_keys = [f"k{i}" for i in src]
    report: dict = {"n": args.n, "dim": args.dim, "k": args.k, "queries": args.queries, "cpus": os.cpu_count(),
                    "flat_max": args.flat_max, "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                    "query_cos_to_source": round(float(np.mean(np.sum(queries * x[src], axis=1))), 3),
                    "rss_data_mib": round(rss_bytes() / 2**20)}

    flat_top1: list[str] | None = None
    if not args.no_flat:
        flat = SemanticIndex(args.dim, flat_max=args.n + 1)
        report["flat"] = await build(flat, x, args.batch, "flat")
        flat_top1, report["flat"]["search"] = await latencies(flat, queries, args.k)
        report["flat"]["recall1_source"] = float(np.mean([a == b for a, b in zip(flat_top1, src_keys)]))
        progress(f"flat: {report['flat']}")
        del flat

    index = SemanticIndex(args.dim, flat_max=args.flat_max, hnsw_m=args.hnsw_m,
                          ef_construction=args.ef_construction, ef_search=args.ef_search[0])
    report["index"] = await build(index, x, args.batch, "index")
    report["index"]["rebuilds"] = index.rebuilds
    report["index"]["search"] = {}
    for ef in args.ef_search:
        index.ef_search = ef
        top1, lat = await latencies(index, queries, args.k)
        lat["recall1_source"] = float(np.mean([a == b for a, b in zip(top1, src_keys)]))
        if flat_top1 is not None:
            lat["recall1_vs_flat"] = float(np.mean([a == b for a, b in zip(top1, flat_top1)]))
        report["index"]["search"][f"ef{ef}"] = lat
        progress(f"index ef={ef}: {lat}")
    report["rss_total_mib"] = round(rss_bytes() / 2**20)
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.index_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--noise", type=float, default=0.5, help="perturbation norm (0.5: cosine ~0.89 to the source)")
    p.add_argument("--batch", type=int, default=10_000, help="vectors per add_many call")
    p.add_argument("--flat-max", type=int, default=50_000)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64, 128],
                   help="comma-separated efSearch values to measure")
    p.add_argument("--no-flat", action="store_true", help="skip the all-Flat comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report to this file")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    result = asyncio.run(main(args))
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
