"""Peers run side by side with stratacache on the same workload, in the same run.

Each peer is installed from PyPI into its own virtual environment (`venv.py`) and
started as a child process in front of the same simulated backend. Peers are optional:
when one cannot be installed or started, the report says so and the run goes on.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from bench.peers.base import PeerHandle
from bench.peers.venv import PeerInstallError
from bench.processes import ProcessError, ProcessGroup

__all__ = ["PeerHandle", "run_peers", "start_peer"]


def start_peer(name: str, backend_url: str, workdir: Path, group: ProcessGroup, *, cosine_threshold: float) -> PeerHandle:
    """Install (once) and start one peer; blocking."""
    if name == "gptcache":
        from bench.peers import gptcache_peer

        return gptcache_peer.start(backend_url, workdir, group, cosine_threshold=cosine_threshold)
    if name == "litellm":
        from bench.peers import litellm_peer

        return litellm_peer.start(backend_url, workdir, group)
    raise ValueError(f"unknown peer {name!r}")


def _cosine_threshold(sc, proxy_config: dict) -> float:
    if sc.peer_threshold is not None:
        return sc.peer_threshold
    from proxy.settings import load_settings

    configured = (proxy_config.get("semantic") or {}).get("threshold")
    return float(configured) if configured is not None else load_settings(None).semantic.threshold


async def run_peers(sc, phases, backend_url: str, out: Path, group: ProcessGroup, progress, concurrency: int,
                    headers: dict, proxy_config: dict | None = None) -> tuple[dict, dict]:
    """Start each peer the scenario names and drive the same phases through it.
    Returns (runs by peer name, status by peer name)."""
    from bench.runner import drive_target, warm_up

    runs: dict = {}
    status: dict = {}
    threshold = _cosine_threshold(sc, proxy_config or {})
    for name in sc.peers:
        workdir = out / "peers" / name
        progress.log(f"peer {name}: installing (first time only) and starting")
        try:
            handle = await asyncio.to_thread(start_peer, name, backend_url, workdir, group,
                                             cosine_threshold=threshold)
        except (PeerInstallError, ProcessError, OSError, ValueError) as exc:
            status[name] = {"status": "failed", "detail": f"{type(exc).__name__}: {str(exc)[-500:]}"}
            progress.log(f"peer {name} unavailable: {str(exc)[:200]}")
            continue
        hdrs = {**headers, **handle.headers}
        await warm_up(handle.base_url, hdrs)
        progress.log(f"peer {name}: {handle.detail}")
        runs[name] = await drive_target(name, handle.base_url, phases, concurrency, progress, headers=hdrs,
                                        backend_url=backend_url, header_map=handle.header_map)
        status[name] = {"status": "ok", "detail": handle.detail}
    return runs, status
