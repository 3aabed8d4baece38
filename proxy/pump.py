"""The upstream pump behind a `Flight`: sends one request upstream, pushes SSE events
into the flight as they arrive (a tee: subscribers forward them at once, a recorder
assembles them), and on a clean end commits the entry to every layer, then finishes
the flight. An upstream error, a broken stream or a cancellation commits nothing."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import orjson

from cache.entry import Entry, EntryMeta, Key
from cache.flight import Flight, Outcome, Upstart
from cache.layer import LayerError
from cache.live_relay import END, EVENTS, LivePublisher, LiveRelay
from cache.redis_lock import Claim, RedisLock
from cache.sse import DONE_FRAME, SSERecorder, SSESplitter, frames_from_body, response_is_complete
from cache.tiered import Hit, TieredCache
from policies.decision import Decision
from proxy.errors import error_body
from proxy.metrics import Metrics
from proxy.upstream import Upstream, UpstreamError

log = logging.getLogger("stratacache.pump")

PASS_HEADERS = ("content-type", "openai-processing-ms", "openai-version", "x-request-id", "openai-organization")


@dataclass(frozen=True, slots=True)
class FetchJob:
    path: str
    payload: bytes
    headers: Mapping[str, str]
    decision: Decision
    vector: np.ndarray | None
    claim: Claim | None = None
    """The request's early lock claim (see cache.redis_lock.EarlyLocks), when it has one."""


def upstream_payload(body: dict, raw: bytes, stream: bool) -> bytes:
    """The request as sent upstream: unchanged, except that a stream always asks for the
    usage chunk (stored with the entry; forwarded only to clients that asked for it)."""
    if not stream:
        return raw
    so = body.get("stream_options")
    if isinstance(so, dict) and so.get("include_usage") is True:
        return raw
    return orjson.dumps({**body, "stream_options": {**(so if isinstance(so, dict) else {}), "include_usage": True}})


def make_entry(d: Decision, body: bytes, parsed: dict, frames: list[bytes] | None, usage_frame: bytes | None,
               now: float) -> Entry:
    if frames is None:
        frames, usage_frame = frames_from_body(d.route, parsed)
    usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else {}
    return Entry(
        body=body, frames=tuple(frames), usage_frame=usage_frame, created_at=now, ttl=d.ttl_s, grace=d.grace_s,
        meta=EntryMeta(tenant=d.tenant, namespace=d.namespace, route=d.route, model=d.model,
                       partition=d.keys.partition, semantic_text=d.keys.semantic_text, tags=d.tags,
                       completion_tokens=int(usage.get("completion_tokens") or 0),
                       request_digest=d.keys.request_digest),
    )


class Pump:
    def __init__(self, *, upstream: Upstream, cache: TieredCache, metrics: Metrics, clock: Callable[[], float],
                 max_entry_bytes: int, lock: RedisLock | None = None, lock_ttl_s: float = 10.0,
                 peer_wait_s: float = 60.0, relay: LiveRelay | None = None,
                 after_commit: Callable[[FetchJob, Entry], None] | None = None) -> None:
        self.upstream = upstream
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.max_entry_bytes = max_entry_bytes
        self.lock = lock
        self.lock_ttl_s = lock_ttl_s
        self.peer_wait_s = peer_wait_s
        self.relay = relay
        """With `lock`: streams answers to, and follows them from, the other replicas."""
        self.after_commit = after_commit
        """Called (synchronously; it only schedules work) after each successful commit."""

    async def run(self, flight: Flight, job: FetchJob) -> None:
        """Lead the flight; across replicas, first take the Redis lock for the key, or follow
        (bounded) the replica holding it: its answer live through the relay when it streams,
        else the entry it stores."""
        key = job.decision.keys.key
        token = None
        if self.lock is not None and job.decision.write:
            try:
                token = await (job.claim.lead() if job.claim is not None else self.lock.acquire(key, self.lock_ttl_s))
            except LayerError as exc:
                self.metrics.layer_error("redis", "lock", exc)  # fail open: go upstream ourselves
                token = ""
            leader = await self._leader_elsewhere(key) if token is None else None
            if token is None and leader is None:
                token = ""  # the lock is a leftover of this process's, or Redis failed: go upstream
            if token is None:
                hit, token = await self._await_peer(flight, job, leader)
                if flight.finished:
                    return
                if hit is not None:
                    flight.finish(Outcome(200, hit.entry.body, entry=hit.entry, via_peer=True))
                    return
        holding = asyncio.ensure_future(self.lock.hold(key, token, self.lock_ttl_s)) if token else None
        live = self.relay.publisher(key, token) if token and self.relay is not None else None
        try:
            await self._run_upstream(flight, job, live)
        finally:
            if live is not None:  # after the commit: a follower that got no events (a JSON answer) finds the entry
                live.close(ok=flight.outcome is not None and flight.outcome.entry is not None)
            if holding is not None:
                holding.cancel()
                await self.lock.release(key, token)

    async def _leader_elsewhere(self, key: Key) -> str | None:
        """The token of the key's lock, found taken, when it is another process's (a leader
        to follow; "" when it has just come free); None when it is this process's own, or
        Redis did not answer (fail open: go upstream)."""
        try:
            holder = await self.lock.holder(key)
        except LayerError as exc:
            self.metrics.layer_error("redis", "lock", exc)
            return None
        return None if self.lock.is_ours(holder) else holder

    async def _await_peer(self, flight: Flight, job: FetchJob, leader: str) -> tuple[Hit | None, str | None]:
        """Wait for the replica holding the lock (token `leader`) to answer. Through the
        relay, its events are pushed into `flight` as they come, and the flight is finished
        here: (None, None). Without them: its stored entry, (hit, None). When the lock comes
        free with nothing stored (its leader got an error, an answer too large to keep, a
        failed write, or died), take it and lead: (None, our token); when Redis fails, or
        nothing came within `peer_wait_s`, go upstream without it: (None, "" or None)."""
        key = job.decision.keys.key
        relayed = _Relayed(job.decision) if self.relay is not None and leader else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.peer_wait_s
        delay = 0.02
        while loop.time() < deadline:
            if relayed is not None and not relayed.ended:
                try:
                    got = await relayed.follow(self.relay, key, leader, flight)
                except LayerError as exc:
                    self.metrics.layer_error("redis", "live", exc)
                    got, relayed.ended = False, True  # poll for the entry instead
                if relayed.started:  # mid-stream: only the relay, or the entry it was making, can finish it
                    if not relayed.ended and (got or await self._leader_alive(key, leader)):
                        continue
                    broken = relayed.marker is None  # no end marker: a failed read, or a leader gone silent
                    stored = await self.cache.exact(key, None) if broken else None
                    flight.finish(relayed.finish(flight, stored.entry if stored is not None else None, self.clock()))
                    return None, None
                if got and not relayed.ended:
                    continue
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)
            hit = await self.cache.exact(key, None)
            if hit is not None and not hit.stale:
                return hit, None
            try:
                token = await self.lock.acquire(key, self.lock_ttl_s)
            except LayerError as exc:
                self.metrics.layer_error("redis", "lock", exc)
                return None, ""
            if token is not None:
                hit = await self.cache.exact(key, None)  # stored just before its leader let go
                if hit is not None and not hit.stale:
                    await self.lock.release(key, token)
                    return hit, None
                return None, token
        if relayed is not None and relayed.started:
            flight.finish(relayed.finish(flight, None, self.clock()))
            return None, None
        return None, None

    async def _leader_alive(self, key: Key, leader: str) -> bool:
        """Whether `leader` still holds the lock (it renews it while it generates)."""
        try:
            return await self.lock.holder(key) == leader
        except LayerError:
            return True  # Redis, not the leader, failed: the read deadline bounds the wait

    async def _run_upstream(self, flight: Flight, job: FetchJob, live: LivePublisher | None) -> None:
        self.metrics.inflight.inc()
        try:
            await self._run(flight, job, live)
        except asyncio.CancelledError:
            flight.finish(Outcome(499, error_body("request cancelled", "cancelled"), error="cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must not hang subscribers
            log.exception("pump failed")
            flight.finish(Outcome(502, error_body(f"proxy error: {type(exc).__name__}", "proxy_error"), error="proxy"))
        finally:
            self.metrics.inflight.dec()

    async def _run(self, flight: Flight, job: FetchJob, live: LivePublisher | None) -> None:
        try:
            resp = await self.upstream.open("POST", job.path, content=job.payload, headers=job.headers)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(exc.code).inc()
            flight.finish(Outcome(exc.status, error_body(str(exc), "upstream_error", code=exc.code), error=exc.code))
            return
        try:
            headers = {k: v for k, v in resp.headers.items() if k.lower() in PASS_HEADERS}
            if resp.status_code != 200:
                self.metrics.upstream_errors.labels(f"http_{resp.status_code}").inc()
                body = await Upstream.read(resp)
                flight.finish(Outcome(resp.status_code, body))  # forwarded as sent, never cached
                return
            if "text/event-stream" in resp.headers.get("content-type", ""):
                await self._stream(flight, job, resp, headers, live)
            else:
                await self._json(flight, job, resp)
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(exc.code).inc()
            flight.finish(Outcome(exc.status, error_body(str(exc), "upstream_error", code=exc.code), error=exc.code))
        finally:
            await resp.aclose()

    async def _stream(self, flight: Flight, job: FetchJob, resp, headers: dict[str, str],
                      live: LivePublisher | None) -> None:
        d = job.decision
        flight.start(Upstart(200, headers, True))
        rec = SSERecorder(d.route)
        split = SSESplitter()
        async for chunk in Upstream.iter_body(resp, decoded=True):
            for ev in split.feed(chunk):
                flight.push(ev, rec.feed_event(ev))
                if live is not None:
                    live.push(ev)
        if not rec.complete:
            self.metrics.upstream_errors.labels("truncated_stream").inc()
            flight.finish(Outcome(502, error_body("upstream stream ended before completion", "upstream_error",
                                                  code="upstream_truncated"), error="upstream stream ended early"))
            return
        assembled = rec.assembled()
        entry = make_entry(d, orjson.dumps(assembled), assembled, rec.frames, rec.usage_frame, self.clock())
        await self._commit(job, entry)
        flight.finish(Outcome(200, entry.body, entry=entry))

    async def _json(self, flight: Flight, job: FetchJob, resp) -> None:
        body = await Upstream.read(resp)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not response_is_complete(parsed):
            flight.finish(Outcome(200, body))  # served, not stored
            return
        entry = make_entry(job.decision, body, parsed, None, None, self.clock())
        await self._commit(job, entry)
        flight.finish(Outcome(200, body, entry=entry))

    async def _commit(self, job: FetchJob, entry: Entry) -> None:
        """Before the flight finishes, so the next request (on any replica) finds it."""
        if not job.decision.write or entry.size > self.max_entry_bytes:
            return
        await self.cache.commit(job.decision.keys.key, entry, job.vector)
        if self.after_commit is not None:
            try:
                self.after_commit(job, entry)
            except Exception:  # noqa: BLE001 - learning from a pair must never fail a request
                log.exception("after-commit hook failed")


class _Relayed:
    """A follower's side of a leader's live relay: the events read so far, pushed into the
    follower's flight (started on the first) and recorded, so the flight can be finished
    with the assembled answer once the leader's stream ends."""

    def __init__(self, d: Decision) -> None:
        self.d = d
        self.last = b"0"
        self.split = SSESplitter()
        self.rec = SSERecorder(d.route)
        self.started = False
        self.ended = False
        self.marker: bytes | None = None  # the leader's end marker, once read

    @property
    def ok(self) -> bool:
        return self.marker == b"ok"

    async def follow(self, relay: LiveRelay, key: Key, leader: str, flight: Flight) -> bool:
        """Read what the leader wrote since last time (waiting a little for it); whether
        anything came. Raises LayerError."""
        entries = await relay.read(key, leader, self.last)
        for entry_id, fields in entries:
            self.last = entry_id
            events = fields.get(EVENTS)
            if events:
                if not self.started:
                    self.started = True
                    flight.start(Upstart(200, {"content-type": "text/event-stream"}, True, via_peer=True))
                for ev in self.split.feed(events):
                    flight.push(ev, self.rec.feed_event(ev))
            end = fields.get(END)
            if end is not None:
                self.ended, self.marker = True, end
        return bool(entries)

    def finish(self, flight: Flight, stored: Entry | None, now: float) -> Outcome:
        """How a relayed flight ends: the answer assembled from the relay when the leader
        ended it "ok"; else, when the relay broke but the leader stored its answer anyway
        (`stored`), the rest of that entry's chunks pushed after those already sent; else
        an error (what was sent stays sent)."""
        if self.ok and self.rec.complete:
            assembled = self.rec.assembled()
            entry = make_entry(self.d, orjson.dumps(assembled), assembled, self.rec.frames, self.rec.usage_frame, now)
            return Outcome(200, entry.body, entry=entry, via_peer=True)
        sent = len(self.rec.frames)
        if stored is not None and len(stored.frames) >= sent and not self.rec.done:
            for chunk in stored.frames[sent:]:
                flight.push(chunk, "chunk")
            if stored.usage_frame is not None:
                flight.push(stored.usage_frame, "usage")
            flight.push(DONE_FRAME, "done")
            return Outcome(200, stored.body, entry=stored, via_peer=True)
        why = "the replica generating this answer stopped before it ended"
        return Outcome(502, error_body(why, "upstream_error", code="peer_stream_broken"), error=why)
