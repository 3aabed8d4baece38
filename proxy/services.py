"""Everything one proxy process holds, built from `Settings` at start and closed at exit.
Owned by the app instance (no module-level singletons)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cache.bans import BanList
from cache.breaker import CircuitBreaker
from cache.flight import Coalescer, Flight
from cache.memory_layer import MemoryLayer
from cache.redis_lock import Claim, EarlyLocks
from cache.tiered import Lookup, TieredCache
from policies.decision import Decision
from policies.keys import ANONYMOUS_TENANT, tenant_from_token
from policies.rules import Resolved, resolve
from proxy.metrics import Metrics
from proxy.pump import FetchJob, Pump
from proxy.settings import Settings
from proxy.upstream import Upstream

log = logging.getLogger("stratacache.services")


@dataclass
class Services:
    settings: Settings
    clock: Callable[[], float]
    metrics: Metrics
    upstream: Upstream
    cache: TieredCache
    coalescer: Coalescer
    pump: Pump
    bans: BanList
    redis: Any = None
    redis_bg: Any = None
    embedded_redis: Any = None
    vector_store: Any = None
    ban_bus: Any = None
    invalidator: Any = None
    grey_zone: Any = None  # proxy.grey_zone.GreyZone: calibration evidence and the judge
    early_locks: EarlyLocks | None = None  # when misses take a cross-replica lock
    access_log: bool = True
    owns_embedder: bool = True
    tasks: set[asyncio.Task] = field(default_factory=set)
    _resolved: dict[tuple[str, str, str], Resolved] = field(default_factory=dict)
    _active: dict[str, int] = field(default_factory=dict)
    _refreshing: set[str] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    decisions: dict = field(default_factory=dict)

    MEMO_MAX_BODY = 16 * 1024
    MEMO_MAX_ENTRIES = 8192

    def decision_memo_key(self, route: str, raw: bytes, headers: Mapping[str, str]) -> tuple | None:
        """Everything a Decision is a function of (config aside, fixed for the process)."""
        if len(raw) > self.MEMO_MAX_BODY:
            return None
        t = self.settings.tenant
        cred = (headers.get("authorization"), headers.get("api-key")) if t.mode == "token" else (
            headers.get(t.header) if t.mode == "header" else None)
        return (route, raw, cred, headers.get("x-cache-namespace"), headers.get("cache-control"),
                headers.get("x-cache-tags"))

    def remember_decision(self, key: tuple, d: Decision) -> None:
        if len(self.decisions) >= self.MEMO_MAX_ENTRIES:
            self.decisions.clear()  # cheap and bounded; repeats refill it at once
        self.decisions[key] = d

    # -- policy lookups ----------------------------------------------------------------
    def tenant_of(self, headers: Mapping[str, str]) -> str:
        t = self.settings.tenant
        if t.mode == "shared":
            return "shared"
        if t.mode == "header":
            v = headers.get(t.header)
            return tenant_from_token(v) if v else ANONYMOUS_TENANT
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else (headers.get("api-key") or "")
        return tenant_from_token(token)

    def resolve(self, model: Any, route: str, namespace: str) -> Resolved:
        m = model if isinstance(model, str) else ""
        k = (m, route, namespace)
        r = self._resolved.get(k)
        if r is None:
            s = self.settings
            r = resolve(s.rules, s.ttl, s.semantic.threshold, model=m, route=route, namespace=namespace)
            if len(self._resolved) > 4096:
                self._resolved.clear()
            self._resolved[k] = r
        return r

    def observe_probe(self, look: Lookup, d: Decision) -> None:
        p = look.probe
        if p.best_similarity is None:
            return
        hit = look.hit is not None and look.hit.layer == "L3"
        self.metrics.similarity.labels("hit" if hit else "miss").observe(p.best_similarity)
        if p.verdict:
            self.metrics.verdicts.labels(p.verdict).inc()
        # the threshold the L3 stage applied (calibrated per entry, or the static one)
        applied = getattr(p, "threshold", None)
        if applied is not None:
            self.metrics.thresholds.labels(getattr(p, "rule", None) or "static", "hit" if hit else "miss").observe(applied)
        threshold = d.threshold if applied is None else applied
        if not hit and threshold - self.settings.semantic.near_miss_band <= p.best_similarity < threshold:
            self.metrics.near_miss.inc()

    # -- limits --------------------------------------------------------------------------
    def admit(self, tenant: str) -> bool:
        cap = self.settings.limits.tenant_concurrency
        n = self._active.get(tenant, 0)
        if cap is not None and n >= cap:
            return False
        self._active[tenant] = n + 1
        return True

    def release(self, tenant: str) -> None:
        n = self._active.get(tenant, 1) - 1
        if n <= 0:
            self._active.pop(tenant, None)
        else:
            self._active[tenant] = n

    # -- flights ---------------------------------------------------------------------------
    def claim(self, d: Decision) -> Claim | None:
        """The request's early lock claim: when its miss would take the cross-replica lock."""
        if self.early_locks is None or not d.write or d.bypass is not None:
            return None
        return self.early_locks.claim(d.keys.key)

    def join_flight(self, d: Decision, job: FetchJob) -> tuple[Flight, bool]:
        if d.bypass is not None:
            flight, leader = Flight(d.keys.key), True
            flight.subscribe()
        else:
            flight, leader = self.coalescer.join(d.keys.key)
        if leader:
            flight.task = self.spawn(self.pump.run(flight, job))
            flight.task.add_done_callback(lambda _t, f=flight: self.coalescer.done(f))
        return flight, leader

    def refresh_in_background(self, d: Decision, job: FetchJob) -> None:
        """Grace: one refresh per key, joined by any concurrent miss for it."""
        key = d.keys.key
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        flight, leader = self.coalescer.join(key)

        async def refresh() -> None:
            try:
                await flight.wait()
            finally:
                self._refreshing.discard(key)
                flight.unsubscribe()

        if leader:
            flight.task = self.spawn(self.pump.run(flight, job))
            flight.task.add_done_callback(lambda _t, f=flight: self.coalescer.done(f))
        self.spawn(refresh())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def stats(self) -> dict:
        c = self.cache
        out: dict = {"layers": {"L1": {"entries": len(c.l1), "bytes": c.l1.bytes}},
                     "hits": self.metrics.count_hits(), "misses": self.metrics.count_misses(),
                     "bans_active": len(self.bans), "inflight_upstream": len(self.coalescer)}
        if c.l2 is not None:
            out["layers"]["L2"] = await c.l2.stats()
        if c.semantic is not None:
            idx = c.semantic.index
            out["layers"]["L3"] = {"entries": len(idx), "partitions": len(idx.partitions()),
                                   "embedder": getattr(c.semantic.embedder, "model_name", "?")}
        return out

    async def aclose(self) -> None:
        self.stopping.set()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.grey_zone is not None:
            await self.grey_zone.aclose()
        if self.cache.semantic is not None:
            await self.cache.semantic.aclose()
        await self.upstream.aclose()
        if self.pump.relay is not None:
            await self.pump.relay.aclose()
        if self.cache.semantic is not None and self.owns_embedder:
            await self.cache.semantic.embedder.aclose()
        await self.cache.aclose()
        if self.redis_bg is not None:
            await self.redis_bg.aclose()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


@dataclass
class _Redis:
    """The request-path pool (short socket timeout), the request path's pipelined connection
    for GET and the lock (when the URL allows one), the background pool (blocking reads,
    pub/sub, sweeps: a timeout longer than its blocking reads), and the embedded server."""

    client: Any = None
    pipe: Any = None
    background: Any = None
    embedded: Any = None


async def _connect_redis(settings: Settings) -> _Redis:
    url = settings.redis.url
    out = _Redis()
    if url is None:
        from cache.redis_server import EmbeddedRedis

        out.embedded = EmbeddedRedis(settings.state_dir)
        url = await asyncio.to_thread(out.embedded.start)
    if url:  # "" means no Redis at all: L1 only
        from cache.redis_client import make_client
        from cache.redis_pipe import RedisPipe

        out.client = make_client(url, settings.redis.timeout_s)
        if RedisPipe.supports(url):
            out.pipe = RedisPipe.from_url(url, connect_timeout_s=settings.redis.timeout_s)
        out.background = make_client(url, max(5.0, settings.redis.timeout_s))
    return out


async def _semantic_stage(settings: Settings, embedder: Any, redis: _Redis, metrics: Metrics) -> Any:
    from cache.semantic_index import SemanticIndex
    from cache.semantic_stage import Calibration, SemanticStage

    sem = settings.semantic
    if embedder is None:
        from embeddings.loader import EmbedderConfig, load_embedder

        e = sem.embedder
        embedder = await asyncio.to_thread(load_embedder, EmbedderConfig(
            model_path=e.model_path, engine=e.engine, device=e.device, timeout_s=e.timeout_s, threads=e.threads,
            single_text_threads=e.single_text_threads))
    store = None
    if redis.client is not None:
        from cache.vector_store import RedisVectorStore

        store = RedisVectorStore(redis.background, prefix=settings.redis.prefix,
                                 timeout=max(1.0, settings.redis.timeout_s))
    verifier = None
    if sem.verify:
        from policies.verification import verify as verifier
    evidence = calibration = None
    if sem.calibration or settings.judge.enabled:
        evidence = _evidence_store(settings, redis.client)
    if sem.calibration:
        from policies.calibration import GlobalPrior

        # the prior's threshold is a placeholder: each lookup starts from its request's threshold
        calibration = Calibration(prior=GlobalPrior(sem.prior.a, sem.prior.b, sem.threshold, 0.0, sem.prior.offset_sd),
                                  margin=sem.prior.margin, radius=sem.evidence.radius,
                                  neighbours=sem.evidence.neighbours)
    return SemanticStage(embedder=embedder, index=SemanticIndex(embedder.dim), store=store,
                         consider_threshold=min(sem.consider_threshold, sem.threshold), k=sem.k, verifier=verifier,
                         events=metrics, calibration=calibration, evidence=evidence,
                         grey_zone=evidence is not None, same_answer_similarity=sem.evidence.same_answer_similarity,
                         veto_weight=sem.evidence.veto_weight, on_evidence=metrics.evidence_recorded,
                         shared_context_check=sem.shared_context_check)


async def _start_invalidation(svc: Services, redis: _Redis) -> None:
    from cache.invalidator import Invalidator

    settings = svc.settings
    svc.invalidator = Invalidator(cache=svc.cache, bans=svc.bans, bus=None, clock=svc.clock)
    # a ban can be dropped once nothing it could match can still be served
    lifetime = settings.ttl.max_s + max([settings.ttl.grace_s] + [r.grace_s or 0 for r in settings.rules])
    if redis.client is not None:
        from cache.ban_bus import BanBus

        svc.ban_bus = svc.invalidator.bus = BanBus(
            redis.background, prefix=settings.redis.prefix, timeout_s=settings.redis.timeout_s,
            ban_lifetime_s=lifetime, on_ban=svc.invalidator.apply_ban, on_purge=svc.invalidator.apply_purge)
        svc.spawn(svc.ban_bus.run(svc.stopping))
        try:
            await asyncio.wait_for(svc.ban_bus.ready.wait(), 2 * settings.redis.timeout_s + 1)
        except TimeoutError:
            log.warning("ban channel not ready at start; continuing (fail open)")
    svc.spawn(svc.invalidator.run_sweeper(svc.stopping, every_s=30.0, max_lifetime_s=lifetime))


async def _sync_index(svc: Services) -> None:
    """Rebuild the semantic index from Redis, then follow the stream of adds and removes."""
    stage = svc.cache.semantic
    store = stage.store if stage is not None else None
    if store is None:
        return
    try:
        n = await store.rebuild(stage.index)
        log.info("semantic index rebuilt from redis", extra={"entries": n})
    except Exception as exc:  # noqa: BLE001 - fail open: start empty, follow() catches up
        svc.metrics.layer_error("vector_store", "rebuild", exc)
    svc.spawn(store.follow(stage.index, svc.stopping))


async def build_services(settings: Settings, *, clock: Callable[[], float] = time.time,
                         embedder: Any = None) -> Services:
    """Start what the settings ask for. Redis: the given URL, else a bundled redis-server.
    The semantic layer loads the embedder (or uses the one passed in, for tests: then the
    caller owns it and it is not closed here)."""
    metrics = Metrics()
    redis = await _connect_redis(settings)
    l2 = None
    if redis.client is not None:
        from cache.redis_layer import RedisLayer

        r = settings.redis
        l2 = RedisLayer(redis.client, prefix=r.prefix, timeout_s=r.timeout_s,
                        breaker=CircuitBreaker(r.breaker_failures, r.breaker_reset_s, time.monotonic),
                        clock=clock, observe=lambda op, dt: metrics.layer_latency("redis", op, dt), pipe=redis.pipe)
    owns_embedder = embedder is None
    semantic = await _semantic_stage(settings, embedder, redis, metrics) if settings.semantic.enabled else None
    bans = BanList()
    cache = TieredCache(l1=MemoryLayer(settings.l1_max_bytes, clock), l2=l2, semantic=semantic, bans=bans,
                        clock=clock, events=metrics)
    u = settings.upstream_http
    upstream = Upstream(settings.upstream, connect_timeout_s=u.connect_timeout_s, read_timeout_s=u.read_timeout_s,
                        max_connections=u.max_connections)
    lock = early_locks = relay = None
    if redis.client is not None and settings.coalesce.enabled:
        from cache.live_relay import LiveRelay
        from cache.redis_lock import RedisLock

        lock = RedisLock(redis.client, prefix=settings.redis.prefix, timeout_s=settings.redis.timeout_s,
                         pipe=redis.pipe)
        early_locks = EarlyLocks(lock, settings.coalesce.lock_ttl_s)
        if settings.coalesce.live_relay:
            relay = LiveRelay(redis.background, prefix=settings.redis.prefix, timeout_s=settings.redis.timeout_s,
                              flush_s=settings.coalesce.relay_flush_s)
    pump = Pump(upstream=upstream, cache=cache, metrics=metrics, clock=clock,
                max_entry_bytes=settings.cacheability.max_entry_bytes, lock=lock,
                lock_ttl_s=settings.coalesce.lock_ttl_s, peer_wait_s=settings.coalesce.follower_wait_s, relay=relay)
    svc = Services(settings=settings, clock=clock, metrics=metrics, upstream=upstream, cache=cache,
                   coalescer=Coalescer(settings.coalesce.enabled), pump=pump, bans=bans, redis=redis.client,
                   redis_bg=redis.background, embedded_redis=redis.embedded,
                   vector_store=semantic.store if semantic is not None else None, owns_embedder=owns_embedder,
                   access_log=settings.access_log, early_locks=early_locks)
    if semantic is not None and semantic.evidence is not None:
        svc.grey_zone = _grey_zone(settings, cache, semantic, metrics)
        pump.after_commit = svc.grey_zone.after_commit
    await _start_invalidation(svc, redis)
    await _sync_index(svc)
    return svc


# -- calibration evidence and the off-path judge ------------------------------------------------
def _evidence_store(settings: Settings, redis_client: Any) -> Any:
    ev = settings.semantic.evidence
    if redis_client is None:
        from cache.evidence_store import MemoryEvidenceStore

        return MemoryEvidenceStore(max_keys=ev.max_keys)
    from cache.evidence_store import RedisEvidenceStore

    r = settings.redis
    return RedisEvidenceStore(redis_client, prefix=r.prefix, timeout_s=r.timeout_s,
                              breaker=CircuitBreaker(r.breaker_failures, r.breaker_reset_s, time.monotonic),
                              cache_entries=ev.cache_entries, cache_ttl_s=ev.cache_ttl_s, max_keys=ev.max_keys)


def _grey_zone(settings: Settings, cache: TieredCache, stage: Any, metrics: Metrics) -> Any:
    from proxy.grey_zone import GreyZone

    judge = None
    j = settings.judge
    if j.enabled:
        from proxy.judge import Judge

        url = j.upstream or settings.upstream
        judge = Judge(url=url, forward_credentials=url.rstrip("/") == settings.upstream.rstrip("/"), cache=cache,
                      stage=stage, metrics=metrics, model=j.model, api_key=j.api_key, rate_per_s=j.rate_per_s,
                      burst=j.burst, queue_size=j.queue_size, concurrency=j.concurrency, timeout_s=j.timeout_s,
                      alias=j.alias)
        judge.start()
    ev = settings.semantic.evidence
    return GreyZone(cache=cache, stage=stage, judge=judge, confirm=settings.semantic.calibration,
                    confirm_rate_per_s=ev.confirm_rate_per_s, confirm_concurrency=ev.confirm_concurrency)
