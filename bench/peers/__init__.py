"""Peers run side by side with stratacache (placeholder while the launchers are written)."""
from __future__ import annotations


async def run_peers(sc, phases, backend_url, out, group, progress, concurrency, headers):
    return {}, {p: {"status": "skipped", "detail": "not implemented yet"} for p in sc.peers}
