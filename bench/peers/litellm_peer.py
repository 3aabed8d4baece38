"""LiteLLM's proxy with its response cache, as a peer, in its own venv.

LiteLLM needs openai < 3, so it cannot share our environment. Its proxy needs a master
key and binds 0.0.0.0 unless told otherwise (we always pass --host 127.0.0.1). Its
semantic caches (redis-semantic, qdrant-semantic) need RediSearch or Qdrant; Debian's
Redis 7.0 has no RediSearch (the proxy starts, logs `unknown command 'FT.INFO'` and never
caches), so the bench runs an exact cache: "redis" on a redis-server of its own, because
the in-process "local" cache keeps only 200 entries (not configurable from the proxy
config) and would evict most of a run. A hit is recognised by the `x-litellm-cache-key`
response header, which LiteLLM sends only for cached answers.
"""
from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from bench.peers.base import PeerHandle
from bench.peers.venv import PeerVenv
from bench.processes import Child, ProcessGroup, free_port
from bench.workloads import MODEL

REQUIREMENTS = ["litellm[proxy]==1.106.2"]
MASTER_KEY = "sk-bench-master"


def cache_status(headers: httpx.Headers) -> dict:
    return {"x-cache-status": "HIT" if headers.get("x-litellm-cache-key") else "MISS"}


def start(backend_url: str, workdir: Path, group: ProcessGroup, *, cache_type: str = "redis") -> PeerHandle:
    venv = PeerVenv("litellm", REQUIREMENTS)
    venv.ensure(workdir / "install.log")
    cache_params: dict = {"type": cache_type}
    if cache_type == "redis":
        redis = group.redis("litellm-redis")
        cache_params.update(host="127.0.0.1", port=str(redis.port))
    config = {
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": backend_url + "/v1",
                                                               "api_key": "sk-none"}}],
        "litellm_settings": {"cache": True, "cache_params": cache_params, "telemetry": False},
        "general_settings": {"master_key": MASTER_KEY},
    }
    cfg = workdir / "litellm-config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = venv.env({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"})
    child = group.add(Child("litellm", [str(venv.bin / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
                                        "--port", str(port)], workdir / "litellm.log", env=env, cwd=workdir))
    child.start()
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/health/liveliness", 300)
    return PeerHandle(name="litellm", base_url=url + "/v1", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      header_map=cache_status,
                      detail=f"litellm {venv.version_of('litellm')} proxy, cache type {cache_type!r} (exact match); "
                             "its semantic caches need RediSearch or Qdrant, absent here")
