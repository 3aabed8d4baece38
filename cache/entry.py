"""Cache entries and the miss sentinel.

An `Entry` is immutable and holds what a hit needs, already serialised: the
non-stream JSON body and the SSE frames of a stream replay. Layers store and
return entries; they never judge freshness (see `policies.freshness`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import orjson

Key = str
"""An opaque exact-match key (hex digest). Never shown to another tenant."""


class _Miss:
    """Falsy sentinel for "not in this layer". Errors are exceptions, never a miss."""

    __slots__ = ()
    _instance: "_Miss | None" = None

    def __new__(cls) -> "_Miss":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISS"


MISS = _Miss()
Miss = _Miss


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """Who an entry belongs to and what it is about: used for bans and the L3 index."""

    tenant: str
    namespace: str
    route: str
    model: str
    partition: str
    """Semantic partition (everything in the exact key but the last user turn's text)."""
    semantic_text: str | None = None
    tags: tuple[str, ...] = ()
    completion_tokens: int = 0
    request_digest: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached completion.

    body       -- the JSON response a non-stream request receives (bytes, served as is)
    frames     -- SSE frames (b"data: {...}\\n\\n") of the stream replay, without usage and [DONE]
    usage_frame-- the usage-only SSE frame, sent when the request set include_usage
    created_at -- seconds on the cache clock when the entry was stored
    ttl, grace -- seconds fresh, then seconds servable as stale while one refresh runs
    """

    body: bytes
    frames: tuple[bytes, ...]
    usage_frame: bytes | None
    created_at: float
    ttl: float
    grace: float
    meta: EntryMeta
    size: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not self.size:
            n = len(self.body) + sum(len(f) for f in self.frames) + len(self.usage_frame or b"")
            object.__setattr__(self, "size", n + 256)

    @property
    def expires_at(self) -> float:
        return self.created_at + self.ttl

    @property
    def purge_at(self) -> float:
        """After this, the entry cannot be served even as stale."""
        return self.created_at + self.ttl + self.grace

    def with_times(self, created_at: float, ttl: float, grace: float) -> "Entry":
        return replace(self, created_at=created_at, ttl=ttl, grace=grace)

    # -- serialisation for shared layers (Redis) ---------------------------------
    # Layout: MAGIC, a 4-byte little-endian header length, the JSON header (metadata,
    # times, part lengths), then the body, the frames and the usage frame as raw bytes.
    # The payloads are never escaped or re-encoded, so decoding is a small JSON parse
    # plus slicing.
    def to_bytes(self) -> bytes:
        m = self.meta
        header = orjson.dumps({
            "created_at": self.created_at, "ttl": self.ttl, "grace": self.grace,
            "body": len(self.body), "frames": [len(f) for f in self.frames],
            "usage": len(self.usage_frame) if self.usage_frame is not None else -1,
            "meta": {"tenant": m.tenant, "namespace": m.namespace, "route": m.route, "model": m.model,
                     "partition": m.partition, "semantic_text": m.semantic_text, "tags": list(m.tags),
                     "completion_tokens": m.completion_tokens, "request_digest": m.request_digest},
        })
        return b"".join((MAGIC, len(header).to_bytes(4, "little"), header, self.body, *self.frames,
                         self.usage_frame or b""))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Entry":
        """Raises `CorruptEntry` when the bytes are not an entry of a known version."""
        if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
            raise CorruptEntry("unknown entry format")
        try:
            at = len(MAGIC) + 4
            hlen = int.from_bytes(raw[len(MAGIC):at], "little")
            h = orjson.loads(raw[at:at + hlen])
            at += hlen
            body = raw[at:at + h["body"]]
            at += h["body"]
            frames = []
            for n in h["frames"]:
                frames.append(raw[at:at + n])
                at += n
            usage = None
            if h["usage"] >= 0:
                usage = raw[at:at + h["usage"]]
                at += h["usage"]
            if at != len(raw):
                raise CorruptEntry("entry length does not match its header")
            md = h["meta"]
            meta = EntryMeta(
                tenant=md["tenant"], namespace=md["namespace"], route=md["route"], model=md["model"],
                partition=md["partition"], semantic_text=md.get("semantic_text"), tags=tuple(md.get("tags") or ()),
                completion_tokens=int(md.get("completion_tokens") or 0),
                request_digest=str(md.get("request_digest") or ""))
            return cls(body=body, frames=tuple(frames), usage_frame=usage, created_at=float(h["created_at"]),
                       ttl=float(h["ttl"]), grace=float(h["grace"]), meta=meta)
        except CorruptEntry:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptEntry(str(exc)) from exc


MAGIC = b"SCE1"


class CorruptEntry(ValueError):
    """Stored bytes that do not decode to an Entry."""
