"""The load driver: sends a workload's phases to one OpenAI-compatible base URL.

Phases run one after the other; inside a phase, at most `concurrency` requests are in
flight (closed loop), or requests start at a fixed `rate` (open loop, still bounded by
`concurrency`). Every request becomes a `Record`: status, cache headers, latency, time to
first token for streams, the answer's digest (to judge hits) and token usage.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import httpx
import orjson

from bench.workloads import Phase, Step

HIT_STATUSES = frozenset({"HIT", "STALE"})
TIMEOUT_S = 120.0


@dataclass(slots=True)
class Record:
    target: str
    phase: str
    index: int            # position of the step in the whole workload
    group: str
    expect: str | None
    kind: str
    measure: bool
    stream: bool
    t_start: float        # seconds since the target's run began
    latency_s: float = 0.0
    ttft_s: float | None = None
    status_code: int = 0
    cache_status: str = ""   # X-Cache-Status ("" when the target sends none)
    layer: str = ""
    similarity: float | None = None
    verdict: str = ""
    answer: str = ""         # digest of the answer text (and tool calls)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and 200 <= self.status_code < 300

    @property
    def hit(self) -> bool:
        return self.cache_status in HIT_STATUSES

    @property
    def offloaded(self) -> bool:
        """Answered without a backend call of its own (a hit, or a coalesced follower)."""
        return self.hit or self.cache_status == "COALESCED"

    def as_dict(self) -> dict:
        return asdict(self)


def answer_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content_of(choice_delta: dict) -> str:
    out = choice_delta.get("content") or ""
    for tc in choice_delta.get("tool_calls") or []:
        fn = tc.get("function") or {}
        out += (fn.get("name") or "") + (fn.get("arguments") or "")
    return out


class Driver:
    """Sends requests to `base_url` (e.g. http://127.0.0.1:8080/v1) as `target`."""

    def __init__(self, base_url: str, target: str, *, headers: dict[str, str] | None = None,
                 concurrency: int = 8, header_map: Callable[[httpx.Headers], dict] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.target = target
        self.headers = headers or {}
        self.concurrency = concurrency
        self.header_map = header_map
        self.t0 = 0.0

    async def run(self, phases: Sequence[Phase], on_done: Callable[[Record], None] | None = None,
                  on_phase: Callable[[Phase, float, float], object] | None = None) -> list[Record]:
        """All phases in order. `on_phase(phase, start, end)` gets each phase's wall clock
        (seconds since the run began); when it returns an awaitable, the next phase waits for it."""
        max_c = max([self.concurrency] + [p.concurrency or 0 for p in phases])
        limits = httpx.Limits(max_connections=max_c + 4, max_keepalive_connections=max_c + 4)
        records: list[Record] = []
        async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT_S, connect=10.0), limits=limits,
                                     headers=self.headers) as client:
            self.t0 = time.perf_counter()
            index = 0
            for phase in phases:
                start = time.perf_counter() - self.t0
                recs = await self._phase(client, phase, index, on_done)
                records.extend(recs)
                index += len(phase.steps)
                if on_phase:
                    done = on_phase(phase, start, time.perf_counter() - self.t0)
                    if inspect.isawaitable(done):
                        await done  # e.g. reads the backend's counters before the next phase
        return records

    async def _phase(self, client: httpx.AsyncClient, phase: Phase, base: int,
                     on_done: Callable[[Record], None] | None) -> list[Record]:
        n = len(phase.steps)
        out: list[Record | None] = [None] * n
        c = phase.concurrency or self.concurrency
        sem = asyncio.Semaphore(c)
        phase_t0 = time.perf_counter()

        async def one(i: int) -> None:
            async with sem:
                rec = await self.send(client, phase, phase.steps[i], base + i)
            out[i] = rec
            if on_done:
                on_done(rec)

        if phase.rate:
            tasks = []
            for i in range(n):
                delay = phase_t0 + i / phase.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        elif c >= n:
            await asyncio.gather(*(one(i) for i in range(n)))
        else:
            queue = iter(range(n))

            async def worker() -> None:
                for i in queue:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(c)))
        return [r for r in out if r is not None]

    async def send(self, client: httpx.AsyncClient, phase: Phase, step: Step, index: int) -> Record:
        rec = Record(self.target, phase.name, index, step.group, step.expect, step.kind, phase.measure,
                     step.stream, time.perf_counter() - self.t0)
        start = time.perf_counter()
        try:
            if step.stream:
                await self._stream(client, step, rec, start)
            else:
                r = await client.post(self.url, json=step.body)
                rec.latency_s = time.perf_counter() - start
                self._headers(r, rec)
                if r.status_code == 200:
                    body = r.json()
                    choice = (body.get("choices") or [{}])[0]
                    rec.answer = answer_digest(_content_of(choice.get("message") or {}))
                    self._usage(body.get("usage"), rec)
                else:
                    rec.error = f"HTTP {r.status_code}: {r.text[:200]}"
        except (httpx.HTTPError, ValueError, OSError) as exc:
            rec.latency_s = time.perf_counter() - start
            rec.error = f"{type(exc).__name__}: {exc}"[:300]
        return rec

    async def _stream(self, client: httpx.AsyncClient, step: Step, rec: Record, start: float) -> None:
        text, done = [], False
        async with client.stream("POST", self.url, json=step.body) as r:
            self._headers(r, rec)
            if r.status_code != 200:
                await r.aread()
                rec.latency_s = time.perf_counter() - start
                rec.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    rec.error = f"error frame: {str(event['error'])[:200]}"
                for ch in event.get("choices") or []:
                    piece = _content_of(ch.get("delta") or {})
                    if piece:
                        if rec.ttft_s is None:
                            rec.ttft_s = time.perf_counter() - start
                        text.append(piece)
                self._usage(event.get("usage"), rec)
        rec.latency_s = time.perf_counter() - start
        rec.answer = answer_digest("".join(text))
        if not done and not rec.error:
            rec.error = "stream ended without [DONE]"

    def _headers(self, r: httpx.Response, rec: Record) -> None:
        rec.status_code = r.status_code
        h = self.header_map(r.headers) if self.header_map else r.headers
        rec.cache_status = (h.get("x-cache-status") or "").upper()
        rec.layer = h.get("x-cache-layer") or ""
        rec.verdict = h.get("x-cache-verdict") or ""
        sim = h.get("x-cache-similarity")
        try:
            rec.similarity = float(sim) if sim else None
        except ValueError:
            rec.similarity = None

    @staticmethod
    def _usage(usage: dict | None, rec: Record) -> None:
        if usage:
            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            rec.completion_tokens = int(usage.get("completion_tokens") or 0)
