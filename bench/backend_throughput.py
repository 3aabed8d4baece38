"""Throughput of the reference backend at 1, 4 and 16 concurrent requests.

    python -m bench.backend_throughput --model DIR [--max-batch 16] [--max-tokens 64]
    python -m bench.backend_throughput --tiny          # builds the tiny model first
    python -m bench.backend_throughput --base-url http://host:port   # a running server
    (--threads 1 sets OMP_NUM_THREADS=1 in the backend: far steadier on a shared CPU box,
    where OpenMP threads spin against other processes.)

Starts `backend.hf_server` in a subprocess on a free loopback port (unless --base-url),
then, per concurrency level, runs that many clients in a closed loop, each sending
non-stream chat requests with distinct prompts, greedy, `ignore_eos` and a fixed
`max_tokens`, so every request generates exactly that many tokens. Prints completion
tokens/s, requests/s and latency percentiles per level.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    latencies: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        return (f"{self.concurrency:>11} {self.requests:>8} {self.tokens:>8} "
                f"{self.seconds:>8.2f} {self.tokens_per_s:>10.1f} "
                f"{self.requests / self.seconds:>7.2f} {p50 * 1000:>8.0f} {p95 * 1000:>8.0f}")


HEADER = (f"{'concurrency':>11} {'requests':>8} {'tokens':>8} {'wall_s':>8} "
          f"{'tokens/s':>10} {'req/s':>7} {'p50_ms':>8} {'p95_ms':>8}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def backend_process(model: str, max_batch: int, device: str, dtype: str,
                    threads: int | None = None):
    port = _free_port()
    code = ("import sys; from backend.hf_server import serve; "
            "serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]), sys.argv[3], sys.argv[4], "
            "int(sys.argv[5]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-c", code, model, str(port), device, dtype,
                             str(max_batch)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the backend exited with status {proc.returncode}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the backend did not come up")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def run_level(base: str, concurrency: int, requests: int, max_tokens: int,
                    tag: str) -> LevelResult:
    latencies: list[float] = []
    tokens = 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in counter:
            body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True,
                    "messages": [{"role": "user", "content": f"{tag} request {i}: tell me more"}]}
            t0 = time.perf_counter()
            r = await http.post(base + "/v1/chat/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(
            max_connections=concurrency + 4)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return LevelResult(concurrency, requests, tokens, seconds, latencies)


async def run_all(base: str, levels: list[int], max_tokens: int, per_client: int) -> list[LevelResult]:
    await run_level(base, 1, 2, max_tokens, "warm-up")
    results = []
    for c in levels:
        res = await run_level(base, c, max(c * per_client, 4), max_tokens, f"c{c}")
        print(res.row(), flush=True)
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local Hugging Face causal LM directory")
    src.add_argument("--tiny", action="store_true", help="build and bench the tiny test model")
    src.add_argument("--base-url", help="bench an already running backend")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the backend (1 is steadier on a busy CPU box)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]

    def bench(base: str) -> None:
        print(f"backend {base}  max_tokens={args.max_tokens}  max_batch={args.max_batch}")
        print(HEADER, flush=True)
        asyncio.run(run_all(base, levels, args.max_tokens, args.requests_per_client))

    if args.base_url:
        bench(args.base_url.rstrip("/"))
        return
    with tempfile.TemporaryDirectory(prefix="sc-tiny-") as tmp:
        model = args.model
        if args.tiny:
            from backend.tiny_model import make_tiny_model

            model = tmp
            make_tiny_model(model)
        with backend_process(model, args.max_batch, args.device, args.dtype,
                             args.threads) as base:
            bench(base)


if __name__ == "__main__":
    main()
