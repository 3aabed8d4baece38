"""The in-process semantic index behind L3: one FAISS index per partition.

Contract (`VectorIndex`):
- vectors are float32 of the index's `dim`, L2-normalised by the caller (the embedder does
  it); a score is an inner product, i.e. a cosine similarity in [-1, 1], higher is closer.
- a search only ever sees its own partition: the partition filter (tenant, namespace,
  model, params, conversation fingerprint: an opaque string to this module) applies
  *before* nearest-neighbour search because each partition is a separate FAISS index.
- `add` of a key that is already indexed replaces its vector (and partition); adding the
  identical vector to the same partition again is a no-op, so replaying our own events
  from the Redis stream costs nothing.
- `remove` returns whether the key was indexed. A partition left with no entries is dropped.
- `holds(partition)` is False only when a search of it would find nothing; it never blocks,
  so a lookup in an empty partition (a new conversation) need not wait for its embedding.

Index type by size (live entries `n` of a partition):

- `n <= flat_max` (20k): `IndexIDMap2(IndexFlatIP)`, exact and cheap to mutate.
- `flat_max < n <= hnsw_max`: HNSW (`IndexHNSWFlat`, inner product) under an id map. Off by
  default (`hnsw_max` defaults to `flat_max`): see "Why these numbers" below. HNSW
  cannot remove, so removals become tombstones that searches skip with an `IDSelector`
  (filtered inside the graph walk, so `k` results still come back); once tombstones pass
  `tombstone_fraction` of the index it is rebuilt from its live vectors.
- `n > hnsw_max`: IVF (`IndexIVFFlat`, inner product, an `IndexFlatIP` coarse quantizer),
  ids stored in the inverted lists themselves with a hash-table direct map, so `remove_ids`
  really removes (O(1) an id) and `reconstruct` works: no id map, no tombstones. `nlist` is
  `ivf_nlist_factor * sqrt(n)` (4 sqrt(n)), capped at one centroid per 39 training points
  (FAISS's k-means minimum); the quantizer is trained (spherical k-means, 10 iterations) on
  a sample of at most `ivf_train_max` (100k) of the partition's vectors; a search probes
  `ivf_nprobe` (48) lists. The partition is retrained and rebuilt when its live size has
  moved `ivf_regrow` (4x) away from the size it was trained at, up or down.

A partition moves up a tier as soon as it passes the tier's bound and down only once it
has shrunk to half the bound below (hysteresis: no rebuild ping-pong around a threshold).

A rebuild (tier change, tombstone compaction, IVF retrain) copies the live vectors and
ids under the partition's lock, builds (and trains) the new index *without* holding it
(searches and mutations keep using the old one and mutations are logged), then replays the
log and swaps. It runs in the worker thread of the mutation that triggered it, so that one
call waits for the build; nothing else does.

Why these numbers: measured with `bench/index_scale.py` on the 2-core dev box (384 dims,
one partition filled through `add_many` in 10k batches, k=4, one query at a time, recall@1
against exact search; queries are perturbed stored vectors at cosine ~0.89, below the L3
hit threshold; the box was shared, load 2-3, so latencies are noisy):

- Flat search costs ~70-80 ns a vector: p50 1.6-2.0 ms at 20k, 4.2-4.6 ms at 50k, 69-75 ms
  at 1M. IVF right after the switch (30k, nlist 693): 0.4-0.5 ms at recall 1.0. Hence
  `flat_max` 20k (was 50k): below it Flat is exact and ~2 ms at worst; above it IVF is
  4-10x faster. The Flat -> IVF rebuild at 30k takes 2-3 s.
- IVF at 1M (trained at 530k, nlist 2564), nprobe 16/32/48/64: random vectors recall@1
  0.91/0.96/0.98/0.99, p50 1.2/1.8/2.7/3.3 ms (1,000 queries: 0.90/0.956/0.976/0.993);
  clustered vectors (10k centres) 0.995/1.0/1.0/1.0. At the L3 hit threshold (queries at
  cosine 0.944) random vectors give 0.973/0.997/0.998/0.999. nprobe 48 keeps the
  worst case (random, cosine 0.89) near 0.98 for <1 ms more than 32; a missed hit costs
  an upstream call. Filling 1M through the tiers: 54-96 s in all (10-19k adds/s), the
  retrains at 130k and 530k taking 10-19 s and 23-46 s (load-dependent); FAISS 1.5 GiB,
  process +2.7-3.0 GiB (Python bookkeeping, allocator slack left by the rebuilds).
- HNSW (M 32) is slower to search than IVF at equal recall and 20-100x slower to fill:
  efConstruction 128 adds ~700/s past 30k on this box (IVF: tens of thousands a second),
  and gives recall@1 0.94/0.99/1.0 at efSearch 32/64/128 at 100k (p50 0.9/1.4/2.6 ms;
  efConstruction 64: 0.965 at efSearch 64; the former default 40: 0.68 at 300k), where
  IVF at 110k gives 1.0 at nprobe 48 in 0.8 ms. It cannot remove either. So the default
  goes Flat -> IVF; HNSW remains, opt-in, for `flat_max < n <= hnsw_max`,
  with efConstruction 128, enough for recall@1 >= 0.95 up to 100k.

Threads. FAISS mutations are not thread-safe: every partition has its own lock, and a
registry lock guards the key <-> id maps (lock order: partition, then registry; never two
partitions). Blocking FAISS work runs in a worker thread (`asyncio.to_thread`, or the
`executor` given), except for small Flat partitions (at most `inline_max` vectors, 2048 by
default), which run inline on the event loop: measured here (384 dims, one thread), a
Flat search takes ~5 us at 10 vectors, ~55 us at 1024 and ~80 us at 2048, while a hop to
a worker thread and back costs 60-110 us and a loop wake-up. Locks of such partitions are
only ever held for microseconds, so waiting on one inline is harmless.

OpenMP. FAISS parallelises with OpenMP, whose thread count is per calling thread. A
single-vector search on a busy machine with OpenMP on every core is ~100x slower than on
one thread (barrier spinning), and the proxy already parallelises across requests, so
searches run with `search_threads` (1) and only bulk builds use `build_threads`.

Memory: a vector costs 4 * dim bytes plus its 8-byte id and ~48 bytes of id map (the
`IndexIDMap2` reverse map, or IVF's hash-table direct map), plus ~8 * hnsw_m bytes of graph
(HNSW); IVF adds its centroids (nlist * 4 * dim). Python bookkeeping adds ~300-600 bytes a
key. A rebuild transiently holds the old index, a copy of the live vectors and the new
index (3x the vectors); IVF's copy is taken a few lists (16k vectors) per lock hold: ~6 ms
each at 500k, where one copy under the lock held it ~2.5 s (page faults, on this box).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Protocol, TypeVar, runtime_checkable

import faiss
import numpy as np

from cache.entry import Key

log = logging.getLogger("stratacache.semantic_index")

T = TypeVar("T")

# Defaults chosen from bench/index_scale.py measurements (see the module docstring).
EF_CONSTRUCTION = 128
IVF_NPROBE = 48

# Replaying a rebuild's log under the lock only once it is this short (in vectors).
_REPLAY_UNDER_LOCK = 1024
# A rebuild copies an IVF index's vectors under the lock this many at a time (at most one
# list more): fresh memory is slow to fault in here (~2.5 s for 500k x 384 floats at once).
_COPY_UNDER_LOCK = 16_384
# Batches smaller than this add with one OpenMP thread (a parallel region costs more).
_PARALLEL_ADD_MIN = 256
# FAISS's k-means wants at least this many training points per centroid.
_IVF_MIN_POINTS_PER_LIST = 39
# Tiers, smallest first.
_RANK = {"flat": 0, "hnsw": 1, "ivf": 2}


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest-neighbour search over L2-normalised float32 vectors, partitioned.

    Returns keys, not values. Scores are cosine similarities, best first.
    """

    async def add(self, key: Key, vector: np.ndarray, partition: str) -> None: ...

    async def search(self, vector: np.ndarray, partition: str, k: int) -> list[tuple[Key, float]]: ...

    async def remove(self, key: Key) -> bool: ...

    def holds(self, partition: str) -> bool:
        """Whether `partition` may have entries (never blocks): False means a search of it
        finds nothing, so a caller need not compute the query vector first."""
        ...

    def __contains__(self, key: object) -> bool:
        """Whether `key` is indexed (never blocks)."""
        ...


def _remove_ids(index: faiss.Index, kind: str, tombstones: set[int], ids: np.ndarray) -> None:
    """Partition lock held. HNSW cannot remove: its removed ids become tombstones."""
    if kind == "hnsw":
        tombstones.update(ids.tolist())
    elif kind == "ivf":
        # through the hash-table direct map (O(1) an id), which older FAISS versions only
        # allow with an IDSelectorArray (not the IDSelectorBatch `remove_ids(array)` builds)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
    else:
        index.remove_ids(ids)


Chunks = list[tuple[np.ndarray, np.ndarray]]  # (ids, vectors) pieces of a partition


def _idmap_contents(part: "_Partition") -> tuple[np.ndarray, np.ndarray]:
    """Partition lock held. The live (ids, vectors) of a Flat or HNSW partition."""
    ids = faiss.vector_to_array(part.index.id_map).astype(np.int64, copy=False)
    x = part.index.index.reconstruct_n(0, part.index.ntotal)
    if part.tombstones:
        live = ~np.isin(ids, np.fromiter(part.tombstones, dtype=np.int64, count=len(part.tombstones)))
        ids, x = ids[live], x[live]
    return ids, x


def _ivf_contents(part: "_Partition", index: faiss.IndexIVF, dim: int, cut: int) -> Chunks:
    """Copies of the (id, vector) pairs of an `IndexIVFFlat` with ids below `cut`, taking
    the partition's lock for a few lists at a time. Lock not held on entry.

    Consistent with the rebuild log started when `cut` was drawn: every later add has an id
    of at least `cut` (left out here, it is in the log), and a list is copied at one
    instant, so a removal either precedes its list's copy (the id is not copied) or follows
    it (the log's replay removes it)."""
    lists = index.invlists
    chunks: Chunks = []
    at = 0
    while at < index.nlist:
        got_ids, got_x = [], []
        with part.lock:
            budget = _COPY_UNDER_LOCK
            while at < index.nlist and budget > 0:
                size = lists.list_size(at)
                if size:
                    got_ids.append(faiss.rev_swig_ptr(lists.get_ids(at), size).copy())
                    got_x.append(faiss.rev_swig_ptr(lists.get_codes(at), size * index.code_size).copy())
                    budget -= size
                at += 1
        if got_ids:
            ids = np.concatenate(got_ids)
            x = np.concatenate(got_x).view(np.float32).reshape(len(ids), dim)
            keep = ids < cut
            chunks.append((ids, x) if keep.all() else (ids[keep], x[keep]))
    return chunks


def _sample(chunks: Chunks, n: int, size: int, seed: int) -> np.ndarray:
    """`size` rows picked at random (without replacement) across `chunks` of `n` rows."""
    if size >= n:
        return np.concatenate([x for _, x in chunks]) if len(chunks) > 1 else chunks[0][1]
    pick = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    out, start = [], 0
    for _, x in chunks:
        lo, hi = np.searchsorted(pick, [start, start + len(x)])
        out.append(x[pick[lo:hi] - start])
        start += len(x)
    return np.concatenate(out)


class _Partition:
    """One partition's FAISS index and its bookkeeping. Fields marked (P) are guarded by
    `lock`, (R) by the registry lock of the owning `SemanticIndex`."""

    __slots__ = ("name", "lock", "index", "kind", "trained", "tombstones", "selector", "log", "keys", "pending")

    def __init__(self, name: str, index: faiss.Index) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.index = index  # (P) IndexIDMap2 over IndexFlatIP / IndexHNSWFlat, or IndexIVFFlat
        self.kind = "flat"  # (P) "flat", "hnsw" or "ivf"
        self.trained = 0  # (P) IVF: live vectors when the quantizer was trained
        self.tombstones: set[int] = set()  # (P) removed ids still in the HNSW graph
        self.selector: tuple[faiss.IDSelector, faiss.IDSelector] | None = None  # (P) cached "not a tombstone"
        self.log: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # (P) ops during a rebuild
        self.keys: set[Key] = set()  # (R) live keys
        self.pending = 0  # (R) adds in flight: keeps an empty partition from being dropped


class SemanticIndex:
    """In-process `VectorIndex`: a FAISS index per partition (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        *,
        flat_max: int = 20_000,
        hnsw_max: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = EF_CONSTRUCTION,
        ef_search: int = 64,
        tombstone_fraction: float = 0.2,
        ivf_nlist_factor: float = 4.0,
        ivf_nprobe: int = IVF_NPROBE,
        ivf_train_max: int = 100_000,
        ivf_regrow: float = 4.0,
        inline_max: int = 2048,
        search_threads: int = 1,
        build_threads: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        hnsw_max = flat_max if hnsw_max is None else hnsw_max
        if dim <= 0:
            raise ValueError("dim must be positive")
        if flat_max < 1:
            raise ValueError("flat_max must be at least 1")
        if hnsw_max < flat_max:
            raise ValueError("hnsw_max must be at least flat_max (equal: no HNSW tier)")
        if not 0.0 < tombstone_fraction <= 1.0:
            raise ValueError("tombstone_fraction must be in (0, 1]")
        if ivf_nlist_factor <= 0 or ivf_nprobe < 1 or ivf_train_max < 1:
            raise ValueError("ivf_nlist_factor, ivf_nprobe and ivf_train_max must be positive")
        if ivf_regrow <= 1.0:
            raise ValueError("ivf_regrow must be above 1")
        self.dim = dim
        self.flat_max = flat_max
        self.hnsw_max = hnsw_max
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.tombstone_fraction = tombstone_fraction
        self.ivf_nlist_factor = ivf_nlist_factor
        self.ivf_nprobe = ivf_nprobe
        self.ivf_train_max = ivf_train_max
        self.ivf_regrow = ivf_regrow
        self.inline_max = inline_max
        self.search_threads = search_threads
        self.build_threads = build_threads if build_threads is not None else (os.cpu_count() or 1)
        self._executor = executor
        self._registry = threading.Lock()
        self._parts: dict[str, _Partition] = {}
        self._by_key: dict[Key, tuple[_Partition, int]] = {}
        self._by_id: dict[int, Key] = {}
        self._next_id = itertools.count(1)
        self.rebuilds = 0
        """Number of completed rebuilds (tier changes, tombstone compactions, IVF retrains)."""
        self.rebuild_history: deque[dict] = deque(maxlen=64)
        """The latest completed rebuilds: partition, from/to kind, vectors, nlist, seconds."""

    # -- the VectorIndex protocol ----------------------------------------------------------
    async def add(self, key: Key, vector: np.ndarray, partition: str) -> None:
        await self.add_many([key], vector, partition)

    async def search(self, vector: np.ndarray, partition: str, k: int) -> list[tuple[Key, float]]:
        """Up to `k` (key, cosine) pairs from `partition` only, best first."""
        q = self._matrix(vector)
        if q.shape[0] != 1:
            raise ValueError("search takes one vector")
        part = self._parts.get(partition)
        if part is None or k <= 0:
            return []
        return await self._call(self._inline(part, 0), self._search_blocking, part, q, k)

    def holds(self, partition: str) -> bool:
        return partition in self._parts  # a partition with no keys and no add in flight is dropped

    async def remove(self, key: Key) -> bool:
        return await self.remove_many([key]) == 1

    # -- batches -----------------------------------------------------------------------------
    async def add_many(self, keys: Sequence[Key], vectors: np.ndarray, partition: str) -> int:
        """Add or replace `keys` (row i of `vectors` for key i) in `partition`.

        Returns how many were added or changed (identical re-adds are skipped). The last
        occurrence of a key repeated within the batch wins.
        """
        x = self._matrix(vectors)
        if len(keys) != x.shape[0]:
            raise ValueError(f"{len(keys)} keys for {x.shape[0]} vectors")
        if not keys:
            return 0
        if len(set(keys)) != len(keys):
            last = {k: i for i, k in enumerate(keys)}
            keys, x = list(last), x[list(last.values())]
        part = self._parts.get(partition)
        inline = self._inline(part, len(keys)) if part is not None else len(keys) <= min(self.inline_max, self.flat_max)
        return await self._call(inline, self._add_blocking, partition, list(keys), x)

    async def remove_many(self, keys: Iterable[Key]) -> int:
        """Remove `keys` from whichever partitions hold them; returns how many were indexed."""
        removed = self._detach(keys)
        if not removed:
            return 0
        inline = all(self._inline(p, len(ids)) for p, ids in removed.items())  # size before removal
        await self._call(inline, self._remove_blocking, removed)
        return sum(len(ids) for ids in removed.values())

    # -- inspection ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def sizes(self) -> dict[str, int]:
        """Live entries per partition."""
        with self._registry:
            return {name: len(p.keys) for name, p in self._parts.items()}

    def partitions(self) -> list[str]:
        with self._registry:
            return list(self._parts)

    def keys_in(self, partition: str) -> list[Key]:
        with self._registry:
            part = self._parts.get(partition)
            return list(part.keys) if part is not None else []

    def keys(self) -> list[Key]:
        """A snapshot of every indexed key."""
        with self._registry:
            return list(self._by_key)

    def partition_of(self, key: Key) -> str | None:
        entry = self._by_key.get(key)
        return entry[0].name if entry is not None else None

    def kind(self, partition: str) -> str | None:
        """"flat", "hnsw" or "ivf" (None for an unknown partition)."""
        part = self._parts.get(partition)
        return part.kind if part is not None else None

    def tombstones(self, partition: str) -> int:
        part = self._parts.get(partition)
        if part is None:
            return 0
        with part.lock:
            return len(part.tombstones)

    def stats(self, partition: str) -> dict | None:
        """The partition's index: kind, vectors (FAISS entries, tombstones included),
        tombstones, and for IVF nlist, nprobe and the live size it was trained at."""
        part = self._parts.get(partition)
        if part is None:
            return None
        with part.lock:
            out = {"kind": part.kind, "vectors": part.index.ntotal, "tombstones": len(part.tombstones)}
            if part.kind == "ivf":
                out.update(nlist=part.index.nlist, nprobe=min(self.ivf_nprobe, part.index.nlist), trained=part.trained)
        return out

    def memory_bytes(self, partition: str | None = None) -> int:
        """Approximate bytes FAISS holds for one partition (or all): vectors, ids, HNSW graph,
        IVF centroids, id maps (`IndexIDMap2`'s reverse map and the IVF direct map estimated
        at 48 bytes an entry)."""
        with self._registry:
            if partition is None:
                parts = list(self._parts.values())
            else:
                parts = [self._parts[partition]] if partition in self._parts else []
        total = 0
        for part in parts:
            with part.lock:
                n = part.index.ntotal
                total += n * (4 * self.dim + 8 + 48)
                if part.kind == "hnsw":
                    graph = faiss.downcast_index(part.index.index).hnsw
                    total += graph.neighbors.size() * 4 + graph.offsets.size() * 8 + graph.levels.size() * 4
                elif part.kind == "ivf":
                    total += part.index.nlist * (4 * self.dim + 64)  # centroids, list headers
        return total

    def get_vector(self, key: Key) -> np.ndarray | None:
        """The stored vector of `key`, or None. Blocking (takes the partition's lock)."""
        entry = self._by_key.get(key)
        if entry is None:
            return None
        part, vid = entry
        with part.lock:
            try:
                return part.index.reconstruct(vid)
            except RuntimeError:  # replaced or removed meanwhile
                return None

    def search_all_partitions(self, vector: np.ndarray, min_score: float) -> list[tuple[Key, str, float]]:
        """Every (key, partition, score) with score >= min_score, across all partitions,
        best first. For the admin "ban by meaning" sweep; blocking: run it in a thread.
        Exact for Flat and IVF partitions (IVF probes every list here); HNSW widens its
        search until the worst hit falls below `min_score`."""
        q = self._matrix(vector)
        if q.shape[0] != 1:
            raise ValueError("search_all_partitions takes one vector")
        faiss.omp_set_num_threads(self.search_threads)
        with self._registry:
            parts = list(self._parts.values())
        out: list[tuple[Key, str, float]] = []
        for part in parts:
            with part.lock:
                hits = self._range_locked(part, q, min_score)
            with self._registry:
                for vid, score in hits:
                    key = self._by_id.get(vid)
                    if key is not None:
                        out.append((key, part.name, score))
        out.sort(key=lambda h: -h[2])
        return out

    # -- blocking work (inline or in a worker thread) -----------------------------------------
    def _add_blocking(self, partition: str, keys: list[Key], x: np.ndarray) -> int:
        with self._registry:
            part = self._parts.get(partition)
            if part is None:
                part = self._parts[partition] = _Partition(partition, self._new_flat())
            part.pending += 1
            same = [(i, e[1]) for i, k in enumerate(keys) if (e := self._by_key.get(k)) is not None and e[0] is part]
        try:
            faiss.omp_set_num_threads(self.build_threads if len(keys) >= _PARALLEL_ADD_MIN else 1)
            with part.lock:
                if same:
                    keep = np.ones(len(keys), dtype=bool)
                    for i, vid in same:
                        try:
                            keep[i] = not np.array_equal(part.index.reconstruct(vid), x[i])
                        except RuntimeError:
                            pass
                    if not keep.all():
                        keys = [k for k, kept in zip(keys, keep) if kept]
                        x = x[keep]
                ids = np.fromiter((next(self._next_id) for _ in keys), dtype=np.int64, count=len(keys))
                if len(keys):
                    part.index.add_with_ids(x, ids)
                    if part.log is not None:
                        part.log.append((ids, x.copy()))  # x may be the caller's array
        except BaseException:
            with self._registry:
                part.pending -= 1
                self._drop_if_empty(part)
            raise
        stale: dict[_Partition, list[int]] = {}
        with self._registry:
            part.pending -= 1
            for key, vid in zip(keys, ids.tolist()):
                prev = self._by_key.get(key)
                if prev is not None:
                    stale.setdefault(prev[0], []).append(prev[1])
                    del self._by_id[prev[1]]
                    if prev[0] is not part:
                        prev[0].keys.discard(key)
                        self._drop_if_empty(prev[0])
                self._by_key[key] = (part, vid)
                self._by_id[vid] = key
                part.keys.add(key)
            self._drop_if_empty(part)  # only when every add was skipped on an empty partition
        if stale:
            self._remove_blocking(stale)
        self._maybe_rebuild(part)
        return len(keys)

    def _detach(self, keys: Iterable[Key]) -> dict[_Partition, list[int]]:
        """Unmap `keys` (registry only); returns the FAISS ids to remove, by partition."""
        removed: dict[_Partition, list[int]] = {}
        with self._registry:
            for key in keys:
                entry = self._by_key.pop(key, None)
                if entry is None:
                    continue
                part, vid = entry
                del self._by_id[vid]
                part.keys.discard(key)
                removed.setdefault(part, []).append(vid)
            for part in removed:
                self._drop_if_empty(part)
        return removed

    def _remove_blocking(self, removed: dict[_Partition, list[int]]) -> None:
        for part, vids in removed.items():
            ids = np.asarray(vids, dtype=np.int64)
            with part.lock:
                _remove_ids(part.index, part.kind, part.tombstones, ids)
                if part.kind == "hnsw":
                    part.selector = None
                if part.log is not None:
                    part.log.append((ids, None))
            self._maybe_rebuild(part)

    def _search_blocking(self, part: _Partition, q: np.ndarray, k: int) -> list[tuple[Key, float]]:
        faiss.omp_set_num_threads(self.search_threads)
        with part.lock:
            if part.kind == "hnsw":
                dist, ids = part.index.search(q, k, params=self._hnsw_params(part, k))
            elif part.kind == "ivf":
                dist, ids = part.index.search(q, k, params=self._ivf_params(part, self.ivf_nprobe))
            else:
                dist, ids = part.index.search(q, k)
        out: list[tuple[Key, float]] = []
        with self._registry:
            for vid, score in zip(ids[0].tolist(), dist[0].tolist()):
                key = self._by_id.get(vid) if vid >= 0 else None
                if key is not None:  # unmapped: removed, replaced, or not yet registered
                    out.append((key, score))
        return out

    def _range_locked(self, part: _Partition, q: np.ndarray, min_score: float) -> list[tuple[int, float]]:
        if part.kind != "hnsw":
            # range_search keeps scores strictly above the radius for inner products
            radius = float(np.nextafter(np.float32(min_score), np.float32(-2)))
            if part.kind == "ivf":  # every list: exact, like Flat
                lims, dist, ids = part.index.range_search(q, radius, params=self._ivf_params(part, part.index.nlist))
            else:
                lims, dist, ids = part.index.range_search(q, radius)
            return [(i, s) for i, s in zip(ids.tolist(), dist.tolist()) if s >= min_score]
        # HNSW has no range search: widen k until the worst hit falls below min_score
        k = 64
        total = part.index.ntotal
        while True:
            dist, ids = part.index.search(q, k, params=self._hnsw_params(part, k))
            hits = [(i, s) for i, s in zip(ids[0].tolist(), dist[0].tolist()) if i >= 0 and s >= min_score]
            if len(hits) < k or k >= total:
                return hits
            k *= 4

    def _hnsw_params(self, part: _Partition, k: int) -> faiss.SearchParametersHNSW:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)
        if part.tombstones:
            if part.selector is None:
                batch = faiss.IDSelectorBatch(np.fromiter(part.tombstones, dtype=np.int64, count=len(part.tombstones)))
                part.selector = (batch, faiss.IDSelectorNot(batch))  # keep `batch` alive
            params.sel = part.selector[1]
        return params

    @staticmethod
    def _ivf_params(part: _Partition, nprobe: int) -> faiss.SearchParametersIVF:
        params = faiss.SearchParametersIVF()
        params.nprobe = max(1, min(nprobe, part.index.nlist))
        return params

    # -- rebuilds -------------------------------------------------------------------------------
    def _kind_for(self, n: int, current: str) -> str:
        """The tier for `n` live vectors: up past a bound, down only at half of it."""
        up = "flat" if n <= self.flat_max else "hnsw" if n <= self.hnsw_max else "ivf"
        if _RANK[up] >= _RANK[current]:
            return up
        down = "flat" if n <= self.flat_max // 2 else "hnsw" if n <= self.hnsw_max // 2 else "ivf"
        return down if _RANK[down] <= _RANK[current] else current

    def _needs_rebuild(self, part: _Partition) -> bool:
        """Partition lock held."""
        total = part.index.ntotal
        live = total - len(part.tombstones)
        if part.kind == "hnsw" and len(part.tombstones) > self.tombstone_fraction * total:
            return True
        if part.kind == "ivf" and not part.trained / self.ivf_regrow <= live <= part.trained * self.ivf_regrow:
            return True
        return self._kind_for(live, part.kind) != part.kind

    def _maybe_rebuild(self, part: _Partition) -> None:
        with part.lock:
            if part.log is not None or not self._needs_rebuild(part):
                return  # one is running, or none is due
            was, old = part.kind, part.index
            part.log = []
            if was == "ivf":  # copied below, a few lists at a time
                cut, chunks = next(self._next_id), []
            else:
                cut, chunks = 0, [_idmap_contents(part)]
        started = time.perf_counter()
        try:
            if was == "ivf":
                chunks = _ivf_contents(part, old, self.dim, cut)
            n = sum(len(ids) for ids, _ in chunks)
            kind = self._kind_for(n, was)
            faiss.omp_set_num_threads(self.build_threads)
            if kind == "ivf":
                new = self._new_ivf(chunks)
            else:
                new = self._new_hnsw() if kind == "hnsw" else self._new_flat()
            del old
            while chunks:  # dropping each piece once added
                piece = chunks.pop(0)
                new.add_with_ids(piece[1], piece[0])
                del piece
            tombstones: set[int] = set()
            while True:
                with part.lock:
                    ops, part.log = part.log, []
                    if sum(len(op[0]) for op in ops) <= _REPLAY_UNDER_LOCK:
                        self._replay(ops, new, kind, tombstones)
                        part.index, part.kind, part.tombstones = new, kind, tombstones
                        part.trained = n if kind == "ivf" else 0
                        part.selector = None
                        part.log = None
                        self.rebuilds += 1
                        break
                self._replay(ops, new, kind, tombstones)  # long logs: off the lock, then again
        except BaseException:
            with part.lock:
                part.log = None
            raise
        seconds = time.perf_counter() - started
        event = {"partition": part.name, "from": was, "to": kind, "vectors": n, "seconds": round(seconds, 3)}
        if kind == "ivf":
            event["nlist"] = new.nlist
        self.rebuild_history.append(event)
        log.info("rebuilt partition index", extra=event)

    @staticmethod
    def _replay(ops: list[tuple[np.ndarray, np.ndarray | None]], index: faiss.Index, kind: str,
                tombstones: set[int]) -> None:
        for ids, x in ops:
            if x is not None:
                index.add_with_ids(x, ids)
            else:
                _remove_ids(index, kind, tombstones, ids)

    # -- helpers --------------------------------------------------------------------------------
    def _new_flat(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _new_hnsw(self) -> faiss.Index:
        inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.ef_construction
        inner.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(inner)

    def ivf_nlist(self, n: int) -> int:
        """The number of IVF lists for a partition trained at `n` vectors."""
        sample = min(n, self.ivf_train_max)
        return max(1, min(round(self.ivf_nlist_factor * n ** 0.5), sample // _IVF_MIN_POINTS_PER_LIST))

    def _new_ivf(self, chunks: Chunks) -> faiss.IndexIVFFlat:
        """An empty `IndexIVFFlat` trained on (a sample of) the vectors in `chunks`. Slow:
        no lock held."""
        n = sum(len(x) for _, x in chunks)
        nlist = self.ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # spherical k-means (inner product), 10 iterations, fixed seeds: deterministic
        index.train(_sample(chunks, n, self.ivf_train_max, seed=n))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids and reconstruct by id
        index.nprobe = max(1, min(self.ivf_nprobe, nlist))
        return index

    def _drop_if_empty(self, part: _Partition) -> None:
        """Registry lock held. Forget a partition with no keys and no add in flight."""
        if not part.keys and part.pending == 0 and self._parts.get(part.name) is part:
            del self._parts[part.name]

    def _inline(self, part: _Partition, adding: int) -> bool:
        n = len(part.keys) + adding
        return part.kind == "flat" and n <= self.inline_max and n <= self.flat_max

    async def _call(self, inline: bool, fn: Callable[..., T], *args: object) -> T:
        if inline:
            return fn(*args)
        if self._executor is not None:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await asyncio.to_thread(fn, *args)

    def _matrix(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {np.shape(vectors)}")
        return np.ascontiguousarray(x)
