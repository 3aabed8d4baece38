"""An OpenAI-compatible HTTP front for GPTCache, run with the GPTCache venv's python.

Not imported by stratacache: `bench/peers/gptcache.py` starts it as a script in the
peer's own virtual environment (gptcache 0.1.44, openai 0.28.1). gptcache_server only
configures embedding caches and exposes its own routes, so this few-line launcher wraps
`gptcache.adapter.openai.ChatCompletion` (GPTCache's OpenAI adapter) instead:

    exact     GPTCache's map data manager keyed by the last message (ExactMatchEvaluation)
    semantic  SQLite + FAISS with all-MiniLM-L6-v2 (the same ONNX export stratacache
              uses, so both caches see identical vectors) and SearchDistanceEvaluation

One request at a time (a lock), as GPTCache's own server works: its adapter and data
managers are not documented as thread-safe. Responses carry `X-Cache-Status: HIT|MISS`
from the adapter's `gptcache` flag, so the bench driver reads them like ours.
"""

import argparse
import sys
import threading
from pathlib import Path


def build_cache(args: argparse.Namespace):
    from gptcache import Cache, Config
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import last_content
    from gptcache.similarity_evaluation import ExactMatchEvaluation, SearchDistanceEvaluation

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    cache = Cache()
    if args.mode == "exact":
        cache.init(pre_embedding_func=last_content,
                   data_manager=get_data_manager(data_path=str(data / "map.txt"), max_size=1_000_000),
                   similarity_evaluation=ExactMatchEvaluation())
        return cache, "exact map"
    sys.path.insert(0, args.repo)  # only for the ONNX encoder (onnxruntime + tokenizers + numpy)
    from embeddings.onnx_backend import OnnxBackend

    encoder = OnnxBackend(Path(args.export_dir), quantized=args.variant != "fp32",
                          weight_only=args.variant == "int8-weights")

    def embed(text, **_):
        return encoder.encode([text])[0]

    dm = get_data_manager(CacheBase("sqlite", sql_url=f"sqlite:///{data / 'cache.db'}"),
                          VectorBase("faiss", dimension=encoder.dim, index_path=str(data / "faiss.index"), top_k=1),
                          max_size=1_000_000)
    cache.init(pre_embedding_func=last_content, embedding_func=embed, data_manager=dm,
               similarity_evaluation=SearchDistanceEvaluation(), config=Config(similarity_threshold=args.threshold))
    return cache, f"sqlite+faiss, {encoder.model_name} ({encoder.engine}), similarity_threshold {args.threshold}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="OpenAI-compatible base URL ending in /v1")
    p.add_argument("--mode", choices=["exact", "semantic"], default="semantic")
    p.add_argument("--threshold", type=float, default=0.8, help="GPTCache similarity_threshold")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--repo", help="stratacache checkout (for the ONNX encoder)")
    p.add_argument("--export-dir", help="stratacache's ONNX export of the embedding model")
    p.add_argument("--variant", choices=["int8", "int8-weights", "fp32"], default="fp32",
                   help="which ONNX model of the export (the one the proxy's loader picked)")
    args = p.parse_args()

    import openai
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from gptcache.adapter import openai as cached_openai
    from starlette.concurrency import run_in_threadpool

    openai.api_base = args.upstream
    openai.api_key = "sk-bench"
    cache, description = build_cache(args)
    lock = threading.Lock()
    app = FastAPI()

    def create(body: dict) -> dict:
        with lock:
            resp = cached_openai.ChatCompletion.create(cache_obj=cache, **body)
        return resp if isinstance(resp, dict) and not hasattr(resp, "to_dict_recursive") else resp.to_dict_recursive()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("stream"):
            return JSONResponse({"error": {"message": "this launcher answers JSON only", "type": "invalid_request_error"}}, 400)
        body.pop("stream_options", None)
        try:
            resp = await run_in_threadpool(create, body)
        except Exception as exc:  # noqa: BLE001 - report, as a server would
            return JSONResponse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}}, 502)
        hit = bool(resp.pop("gptcache", False))
        resp.pop("saved_token", None)
        return JSONResponse(resp, headers={"X-Cache-Status": "HIT" if hit else "MISS"})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "cache": description}

    print(f"gptcache launcher: {description}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
