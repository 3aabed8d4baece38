"""Off-path verification of grey-zone pairs by the upstream model (after Krites, arXiv 2602.13165).

A grey-zone request (a verified L3 candidate above the consider threshold but under its
threshold) is answered normally, as a miss. Once its fresh answer is committed, the pair
(cached text, query text) may be queued here. Workers ask the judge upstream's
`/v1/chat/completions` a yes/no question (`policies.judge_prompt`) with temperature 0 and
max_tokens 3, using the request's model (or `judge.model`):

    yes      -> "correct" evidence on the cached entry, and an alias: the new request's
                exact key now holds a copy of the cached entry (L1 and L2), so the next
                identical request is an exact HIT with the cached answer
    no       -> "wrong" evidence on the cached entry
    unclear  -> nothing (an answer that is neither yes nor no)

Never on the request path: `submit` only enqueues (bounded; a full queue drops the pair,
counted), workers take at most `rate_per_s` judgements a second (token bucket of `burst`),
every call has a deadline, and `aclose` cancels the workers without waiting. Credentials:
`judge.api_key` when set; otherwise the request's own credentials, forwarded only when the
judge is the proxy's own upstream (a tenant's token never goes to another server).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import httpx
import orjson

from cache.tiered import GreyCandidate
from cache.entry import Key
from cache.layer import LayerError
from cache.semantic_stage import SemanticStage
from cache.tiered import TieredCache
from policies.freshness import Freshness, freshness
from policies.judge_prompt import judge_body, read_verdict
from proxy.metrics import Metrics

log = logging.getLogger("stratacache.judge")

CREDENTIAL_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project")


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `reserve` takes one now and says
    how long to wait before using it (time injected, so tests need no sleep)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def reserve(self) -> float:
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self) -> bool:
        """Take a token if one is there now; never goes into debt."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class JudgeJob:
    grey: GreyCandidate
    key: Key
    """The new request's exact key (it holds the request's fresh answer)."""
    model: str
    credentials: tuple[tuple[str, str], ...] = ()


class JudgeError(RuntimeError):
    """The judge upstream could not answer (transport failure, deadline, non-200)."""


def credentials_of(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((h, headers[h]) for h in CREDENTIAL_HEADERS if h in headers)


class Judge:
    def __init__(self, *, url: str, forward_credentials: bool, cache: TieredCache, stage: SemanticStage,
                 metrics: Metrics, model: str | None = None, api_key: str | None = None, rate_per_s: float = 1.0,
                 burst: int = 5, queue_size: int = 256, concurrency: int = 2, timeout_s: float = 10.0,
                 alias: bool = True, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.cache = cache
        self.stage = stage
        self.metrics = metrics
        self.model = model
        self.api_key = api_key
        self.forward_credentials = forward_credentials
        self.timeout_s = timeout_s
        self.alias = alias
        self.concurrency = concurrency
        self.bucket = TokenBucket(rate_per_s, burst)
        self._queue: asyncio.Queue[JudgeJob] = asyncio.Queue(queue_size)
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s, transport=transport,
                                         limits=httpx.Limits(max_connections=concurrency))
        self._workers: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.concurrency)]

    def submit(self, job: JudgeJob) -> bool:
        """Queue a pair; False (counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.judgements.labels("dropped").inc()
            return False
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            wait = self.bucket.reserve()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.handle(job)
            except Exception:  # noqa: BLE001 - a bug in one judgement must not stop the worker
                log.exception("judgement failed")

    async def ask(self, job: JudgeJob) -> bool | None:
        """One judgement: True yes, False no, None unclear. Raises JudgeError."""
        body = judge_body(self.model or job.model, job.grey.cached_text, job.grey.query_text)
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        elif self.forward_credentials:
            headers.update(job.credentials)
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self._client.post("/v1/chat/completions", content=orjson.dumps(body), headers=headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise JudgeError(f"judge upstream failed: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise JudgeError(f"judge upstream answered HTTP {resp.status_code}")
        try:
            return read_verdict(orjson.loads(resp.content))
        except orjson.JSONDecodeError:
            return None

    async def handle(self, job: JudgeJob) -> bool | None:
        try:
            verdict = await self.ask(job)
        except JudgeError as exc:
            self.metrics.judgements.labels("error").inc()
            log.warning("judge failed", extra={"error": str(exc)})
            return None
        if verdict is None:
            self.metrics.judgements.labels("unclear").inc()
            return None
        self.metrics.judgements.labels("yes" if verdict else "no").inc()
        await self.stage.record(job.grey.key, job.grey.similarity, verdict, source="judge")
        if verdict and self.alias:
            await self._make_alias(job)
        return verdict

    async def _make_alias(self, job: JudgeJob) -> None:
        """Store the cached entry under the new request's key, with the new request's own
        metadata (text, digest, tags merged), so purges and bans of either reach it."""
        cache = self.cache
        try:
            cached = await cache.get_entry(job.grey.key)
            fresh = await cache.get_entry(job.key)
        except LayerError:
            return  # no alias when the shared layer cannot answer
        if not cached or not fresh or cached.meta.partition != fresh.meta.partition:
            return
        if cache.bans.blocks(cached) or freshness(cached.created_at, cached.ttl, cached.grace, cache.clock(),
                                                  None) is not Freshness.FRESH:
            return
        meta = replace(fresh.meta, tags=tuple(sorted(set(fresh.meta.tags) | set(cached.meta.tags))),
                       completion_tokens=cached.meta.completion_tokens)
        alias = replace(cached, meta=meta)
        await cache.l1.set(job.key, alias)
        if cache.l2 is not None:
            try:
                await cache.l2.set(job.key, alias)
            except LayerError as exc:
                self.metrics.layer_error("L2", "alias", exc)
        self.metrics.aliases.inc()

    def __len__(self) -> int:
        return self._queue.qsize()

    async def aclose(self) -> None:
        for t in self._workers:
            t.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self._client.aclose()
