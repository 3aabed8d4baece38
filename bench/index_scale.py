"""How the L3 index scales in one process: N normalised vectors in one partition.

    python -m bench.index_scale --n 1000000 --dim 384                  # random vectors
    python -m bench.index_scale --n 1000000 --dim 384 --dist clustered # around 10k centres

Fills one partition of `SemanticIndex` through `add_many` in batches, as the proxy would:
Flat up to `--flat-max`, then (HNSW up to `--hnsw-max` if it is above `--flat-max`, then)
IVF, retrained each time the partition has grown `--ivf-regrow` times since its last
training. Every rebuild happens inside the `add_many` call that triggered it, so the build
time includes them all.

At checkpoints (each tier's upper bound, right after each rebuild, and at N) it measures
search latency p50/p99 at k=4, one query at a time through the public async API (the hop
to a worker thread included), and recall@1 against exact search over the vectors indexed
so far, on `--queries` queries that are perturbed stored vectors (cosine ~0.9 to their
source). IVF is measured at several nprobe, HNSW at several efSearch. Unless `--no-flat`,
an all-Flat index of all N vectors is timed first for comparison. Progress goes to
stderr, the JSON report to stdout.

Random vectors are the worst case for every approximate index (no structure for IVF's
clusters or HNSW's graph to exploit); `--dist clustered` draws each vector around one of
`--centres` random centres (cosine ~0.78 to its centre), closer to real embeddings.
`--noise 0.35` puts the queries at the L3 hit threshold (cosine ~0.944) instead.

On the 2-core dev box (shared, load 2-4) `--n 1000000` runs in 2-3 minutes and peaks at
~4.7 GiB resident (the vectors themselves 1.5 GiB of it). With the defaults, random
vectors: Flat p50 ~70 ms at 1M (exact, for comparison) and 1.6-2.2 ms at its 20k bound;
IVF at 1M (nlist 2564, trained at 530k) p50 2.1-2.7 ms, p99 4-7 ms, recall@1 0.98 at
nprobe 48; filling 1M through the tiers, retrains included, 65-96 s. Clustered vectors:
recall@1 1.0 at nprobe 32 and up. Details in `cache/semantic_index.py`'s docstring.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

import faiss
import numpy as np

from cache.semantic_index import SemanticIndex

PARTITION = "bench"
DEFAULTS = SemanticIndex.__init__.__kwdefaults__  # the proxy's settings, unless overridden


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_vectors(rng: np.random.Generator, args: argparse.Namespace, chunk: int = 100_000) -> np.ndarray:
    x = np.empty((args.n, args.dim), dtype=np.float32)
    centres = None
    if args.dist == "clustered":
        centres = normalise(rng.standard_normal((args.centres, args.dim), dtype=np.float32))
    for s in range(0, args.n, chunk):
        m = min(chunk, args.n - s)
        part = rng.standard_normal((m, args.dim), dtype=np.float32)
        if centres is not None:  # a centre plus noise of norm `spread`
            part *= args.spread / np.sqrt(args.dim)
            part += centres[rng.integers(0, len(centres), m)]
        x[s:s + m] = normalise(part)
    return x


def make_queries(rng: np.random.Generator, x: np.ndarray, size: int, count: int, noise: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`count` perturbed copies of vectors among the first `size`; and their sources."""
    src = rng.choice(size, size=count, replace=False)
    q = x[src] + rng.standard_normal((count, x.shape[1]), dtype=np.float32) * (noise / np.sqrt(x.shape[1]))
    return normalise(q), src


def exact_top1(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact nearest neighbour (inner product) of each query among the rows of `x`."""
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, ids = faiss.knn(q, x, 1, metric=faiss.METRIC_INNER_PRODUCT)
    return ids[:, 0]


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


async def measure(index: SemanticIndex, x: np.ndarray, size: int, args: argparse.Namespace,
                  rng: np.random.Generator, why: str) -> dict:
    """Latency and recall@1 (vs exact, and vs the query's source) of the partition at `size`."""
    q, src = make_queries(rng, x, size, args.queries, args.noise)
    exact = [f"k{i}" for i in exact_top1(x[:size], q)]
    sources = [f"k{i}" for i in src]
    stats = index.stats(PARTITION) or {}
    out: dict = {"size": size, "why": why, **stats}
    out.pop("vectors", None)
    kind = stats.get("kind")
    settings: list[tuple[str, str, int]] = [("exact", "", 0)]
    if kind == "ivf":
        settings = [(f"nprobe{p}", "ivf_nprobe", p) for p in args.nprobe]
    elif kind == "hnsw":
        settings = [(f"ef{e}", "ef_search", e) for e in args.ef_search]
    saved = index.ivf_nprobe, index.ef_search
    results = {}
    for label, attr, value in settings:
        if attr:
            setattr(index, attr, value)
        top1, lat = await latencies(index, q, args.k)
        lat["recall1_vs_exact"] = round(float(np.mean([a == b for a, b in zip(top1, exact)])), 3)
        lat["recall1_source"] = round(float(np.mean([a == b for a, b in zip(top1, sources)])), 3)
        results[label] = lat
    index.ivf_nprobe, index.ef_search = saved
    out["exact_is_source"] = round(float(np.mean([a == b for a, b in zip(exact, sources)])), 3)
    out["search"] = results
    progress(f"measured at {size:,} ({why}): {json.dumps(out)}")
    return out


async def build(index: SemanticIndex, x: np.ndarray, args: argparse.Namespace, rng: np.random.Generator,
                checkpoints: set[int], label: str) -> dict:
    rss0, t0 = rss_bytes(), time.perf_counter()
    measured: list[dict] = []
    paused = 0.0  # time spent measuring, not building
    rebuilds = index.rebuilds
    for s in range(0, len(x), args.batch):
        e = min(s + args.batch, len(x))
        await index.add_many([f"k{i}" for i in range(s, e)], x[s:e], PARTITION)
        if (e // args.batch) % max(1, 100_000 // args.batch) == 0 or e == len(x) or index.rebuilds != rebuilds:
            progress(f"{label}: {e:,} added, {time.perf_counter() - t0 - paused:.1f}s building, "
                     f"{json.dumps(index.stats(PARTITION))}")
        if label != "flat-only" and (e in checkpoints or index.rebuilds != rebuilds):
            why = "rebuilt" if index.rebuilds != rebuilds else ("n" if e == len(x) else "tier bound")
            m0 = time.perf_counter()
            measured.append(await measure(index, x, e, args, rng, why))
            paused += time.perf_counter() - m0
        rebuilds = index.rebuilds
    seconds = time.perf_counter() - t0 - paused
    return {"kind": index.kind(PARTITION), "build_s": round(seconds, 1), "adds_per_s": round(len(x) / seconds),
            "rebuilds": list(index.rebuild_history), "faiss_mib": round(index.memory_bytes(PARTITION) / 2**20),
            "rss_delta_mib": round((rss_bytes() - rss0) / 2**20), "measured": measured}


async def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    progress(f"generating {args.n:,} x {args.dim} {args.dist} vectors")
    x = make_vectors(rng, args)
    report: dict = {
        "n": args.n, "dim": args.dim, "dist": args.dist, "k": args.k, "queries": args.queries,
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "batch": args.batch,
        "flat_max": args.flat_max, "hnsw_max": args.hnsw_max, "ivf_regrow": args.ivf_regrow,
        "ivf_train_max": args.ivf_train_max, "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
        "rss_data_mib": round(rss_bytes() / 2**20)}
    if args.dist == "clustered":
        report.update(centres=args.centres, spread=args.spread)

    if not args.no_flat:
        flat = SemanticIndex(args.dim, flat_max=args.n + 1)
        report["flat_at_n"] = await build(flat, x, args, rng, set(), "flat-only")
        report["flat_at_n"]["measured"] = [await measure(flat, x, args.n, args, rng, "all-Flat at n")]
        report["flat_at_n"].pop("rebuilds")
        del flat

    index = SemanticIndex(args.dim, flat_max=args.flat_max, hnsw_max=args.hnsw_max, hnsw_m=args.hnsw_m,
                          ef_construction=args.ef_construction, ivf_regrow=args.ivf_regrow,
                          ivf_train_max=args.ivf_train_max)
    report["ivf_nprobe_default"] = index.ivf_nprobe
    checkpoints = {args.flat_max, args.n, index.hnsw_max}  # each tier's upper bound, and N
    report["index"] = await build(index, x, args, rng, checkpoints, "index")
    report["rss_total_mib"] = round(rss_bytes() / 2**20)
    report["rss_peak_mib"] = round(peak_rss_bytes() / 2**20)
    report["loadavg_end"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m bench.index_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--dist", choices=["random", "clustered"], default="random")
    p.add_argument("--centres", type=int, default=10_000, help="clustered: how many centres")
    p.add_argument("--spread", type=float, default=0.8, help="clustered: noise norm around a centre")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--noise", type=float, default=0.5, help="perturbation norm (0.5: cosine ~0.89 to the source)")
    p.add_argument("--batch", type=int, default=10_000, help="vectors per add_many call")
    p.add_argument("--flat-max", type=int, default=DEFAULTS["flat_max"])
    p.add_argument("--hnsw-max", type=int, default=None, help="above --flat-max: an HNSW tier up to this size")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=DEFAULTS["ef_construction"])
    p.add_argument("--ef-search", type=ints, default=[16, 64, 128], help="HNSW efSearch values to measure")
    p.add_argument("--nprobe", type=ints, default=[16, 32, 48, 64], help="IVF nprobe values to measure")
    p.add_argument("--ivf-regrow", type=float, default=DEFAULTS["ivf_regrow"])
    p.add_argument("--ivf-train-max", type=int, default=DEFAULTS["ivf_train_max"])
    p.add_argument("--no-flat", action="store_true", help="skip the all-Flat index at N")
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
