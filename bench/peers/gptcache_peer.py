"""GPTCache as a peer: its own venv, the launcher script, the same embedding model.

GPTCache 0.1.44 pins openai 0.28.1; it counts tokens with tiktoken's cl100k_base on every
hit, and tiktoken cannot download here, so TIKTOKEN_CACHE_DIR points at the copy the
LiteLLM wheel ships (fetched with `pip download`, not installed). It also runs
`pip install` at import time for what it misses, with whatever pip is first on PATH:
its venv goes first and the libraries it would fetch are installed up front.

Thresholds. GPTCache's FAISS index returns squared L2 distances d = 2 - 2cos for unit
vectors; SearchDistanceEvaluation scores 4 - d and serves when the score is at least
4 x similarity_threshold, i.e. when cos >= 2 x similarity_threshold - 1. A cosine
threshold c is therefore similarity_threshold = (c + 1) / 2.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from bench.peers.base import PeerHandle
from bench.peers.venv import PeerInstallError, PeerVenv, cache_root
from bench.processes import Child, ProcessGroup, free_port

REQUIREMENTS = ["gptcache==0.1.44", "openai==0.28.1", "faiss-cpu", "sqlalchemy", "onnxruntime", "tokenizers",
                "numpy", "fastapi", "uvicorn", "tiktoken", "requests", "cachetools"]
LAUNCHER = Path(__file__).with_name("gptcache_launcher.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def gptcache_threshold(cosine: float) -> float:
    return (cosine + 1.0) / 2.0


def tiktoken_cache_dir(log_path: Path) -> Path:
    """A TIKTOKEN_CACHE_DIR holding cl100k_base, taken from the LiteLLM wheel."""
    target = cache_root() / "tiktoken"
    if target.exists() and any(target.iterdir()):
        return target
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), "litellm"],
                           stdout=log, stderr=subprocess.STDOUT, timeout=600)
    found = sorted(wheels.glob("litellm-*.whl"))
    if r.returncode != 0 or not found:
        raise PeerInstallError("gptcache: could not fetch the LiteLLM wheel for tiktoken's cl100k_base")
    target.mkdir(parents=True, exist_ok=True)
    prefix = "litellm/litellm_core_utils/tokenizers/"
    with zipfile.ZipFile(found[-1]) as z:
        for name in z.namelist():
            base = name[len(prefix):]
            if name.startswith(prefix) and base and "/" not in base and not base.endswith((".py", ".json")):
                (target / base).write_bytes(z.read(name))
    if not any(target.iterdir()):
        raise PeerInstallError("gptcache: no tiktoken files in the LiteLLM wheel")
    return target


def onnx_export() -> tuple[Path, str]:
    """stratacache's ONNX export of the embedding model and the variant the proxy's loader
    picks on this machine ("int8", "int8-weights" or "fp32"; fp32 where the proxy would
    fall back to torch), so GPTCache embeds exactly as we do."""
    from embeddings.loader import EmbedderConfig, load_backend
    from embeddings.onnx_export import ensure_export
    from embeddings.sentence_transformer import default_model_path
    from proxy.settings import load_settings

    cache_dir = Path(load_settings(None).state_dir) / "onnx"
    engine = load_backend(EmbedderConfig(cache_dir=str(cache_dir))).engine
    variant = engine.split(":", 1)[1] if engine.startswith("onnx:") else "fp32"
    return ensure_export(Path(default_model_path()), cache_dir, quantize=False), variant


def start(backend_url: str, workdir: Path, group: ProcessGroup, *, cosine_threshold: float,
          mode: str = "semantic") -> PeerHandle:
    log = workdir / "install.log"
    venv = PeerVenv("gptcache", REQUIREMENTS)
    venv.ensure(log)
    tiktoken = tiktoken_cache_dir(log)
    export, variant = onnx_export()
    port = free_port()
    threshold = gptcache_threshold(cosine_threshold)
    # -P: the launcher's folder (bench/peers) must not shadow `gptcache` or `venv`.
    argv = [str(venv.python), "-P", str(LAUNCHER), "--port", str(port), "--upstream", backend_url + "/v1",
            "--mode", mode, "--threshold", f"{threshold:.6f}", "--data-dir", str(workdir / "data"),
            "--repo", str(REPO_ROOT), "--export-dir", str(export), "--variant", variant]
    child = group.add(Child("gptcache", argv, workdir / "gptcache.log",
                            env=venv.env({"TIKTOKEN_CACHE_DIR": str(tiktoken), "OMP_NUM_THREADS": "1"})))
    child.start()
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/healthz", 180)
    detail = (f"gptcache {venv.version_of('gptcache')} ({mode}: "
              + ("map data manager, exact match" if mode == "exact" else
                 f"sqlite+faiss, all-MiniLM-L6-v2 {variant} ONNX, similarity_threshold "
                 f"{threshold:.4f} = cosine {cosine_threshold:g}")
              + "); one request at a time")
    return PeerHandle(name="gptcache", base_url=url + "/v1", detail=detail)
