"""What a started peer looks like to the bench driver."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class PeerHandle:
    name: str
    base_url: str                      # OpenAI-compatible, ending in /v1
    detail: str                        # how it is configured, for the report
    headers: dict[str, str] = field(default_factory=dict)
    # Maps the peer's response headers to ours (X-Cache-Status...); None: read as they are.
    header_map: Callable[[httpx.Headers], dict] | None = None
