"""Cache hits as HTTP responses, in the shape the request asked for."""
from __future__ import annotations

from starlette.responses import Response

from cache.entry import Entry
from cache.sse import DONE_FRAME


def sse_bytes(entry: Entry, include_usage: bool) -> bytes:
    parts = list(entry.frames)
    if include_usage and entry.usage_frame is not None:
        parts.append(entry.usage_frame)
    parts.append(DONE_FRAME)
    return b"".join(parts)


def entry_response(entry: Entry, *, stream: bool, include_usage: bool, headers: dict[str, str]) -> Response:
    if stream:
        return Response(sse_bytes(entry, include_usage), media_type="text/event-stream",
                        headers={**headers, "cache-control": "no-cache"})
    return Response(entry.body, media_type="application/json", headers=headers)
