"""A deterministic simulated OpenAI-compatible generation server (no model).

For tests, demos and benchmarks. Routes: POST /v1/chat/completions and /v1/completions
(stream and non-stream), GET /v1/models, GET /healthz, GET /stats -> {"requests": N}
(generation requests accepted, i.e. that passed validation, faults included).

Answers. The text is a pure function of the request: a SHA-256 of the canonical JSON of
the body without its transport and length fields (`stream`, `stream_options`,
`max_tokens`, `max_completion_tokens`, `stop`, `n`, `user`) seeds a word generator, with
the choice index mixed in. Same request -> same answer; a shorter `max_tokens` gives a
prefix of the same answer. One token is one word-ish piece (" word", ",", ".").
An answer ends naturally after 48 tokens (finish_reason "stop"); `max_tokens` /
`max_completion_tokens` below that cut it (finish_reason "length"); a `stop` string cuts
it before the stop text (finish_reason "stop"). `usage.prompt_tokens` counts the
word-ish pieces of the prompt (every message's text). Responses carry
`system_fingerprint: "stratacache-simulated"` and echo the requested `model`.

Timing. The first token comes `ttft_ms` after the request, then one token every
1/`tokens_per_s` seconds (`tokens_per_s <= 0`: no per-token delay). A non-stream answer
takes ttft + tokens / rate. All waits are asyncio sleeps: many requests run concurrently.

Request headers for fault injection and shaping:

- `X-Sim-Fail: <status>` (e.g. 500, 429, 503): answer that status with an OpenAI error
  body `{"error": {"message", "type", "param", "code"}}`.
- `X-Sim-Fail: mid-stream`: a stream sends its role chunk and 3 content chunks, then
  the connection is dropped (no finish_reason, no [DONE]). A non-stream request gets
  its headers and half of its JSON body, then the drop.
- `X-Sim-Tool-Call: 1` (chat only): the answer is one `get_weather` tool call with JSON
  arguments, `content: null`, finish_reason "tool_calls"; streamed as OpenAI does (a
  header delta with index, id, type and name, then argument fragments).
- `X-Sim-Answer-Tokens: N`: the natural answer length for this request instead of 48.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backend.routes import install_openai_routes
from backend.openai_format import (
    SSE_DONE, Choice, FinishReason, GenerationRequest, RequestError, ResponseFormat, Route,
    ToolCall, Usage, cut_at_stop, error_body, message_text, parse_request, sse,
)

FINGERPRINT = "stratacache-simulated"
MODEL_ID = "stratacache-simulated"
DEFAULT_ANSWER_TOKENS = 48
MID_STREAM_CHUNKS = 3

_UNHASHED = frozenset({"stream", "stream_options", "max_tokens", "max_completion_tokens",
                       "stop", "n", "user"})

_WORDS = (
    "the a an this that model cache answer request token stream server proxy layer "
    "memory vector query result value system user data time fast slow simple careful "
    "small large local shared remote first next last every some many few good clear "
    "is are was can will should may must does has makes keeps finds returns sends "
    "stores reads writes checks builds runs waits serves knows learns gives takes "
    "and or but so because while when where then also often rarely always never "
    "in on at by for with from into over under about between through after before "
    "network batch latency throughput key hit miss entry policy index search text "
    "word sentence idea example question reason method process change state"
).split()
_CITIES = ("Paris", "Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Austin", "Turin")

_PIECE = re.compile(r"\w+|[^\w\s]")


class SimulatedDisconnect(ConnectionError):
    """Raised inside a response body to drop the connection (`X-Sim-Fail: mid-stream`)."""


class _QuietSimulatedDisconnect(logging.Filter):
    """Keeps uvicorn from logging a traceback for a deliberate drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        pending = [exc]
        while pending:
            e = pending.pop()
            if isinstance(e, SimulatedDisconnect):
                return False
            if isinstance(e, BaseExceptionGroup):
                pending.extend(e.exceptions)
        return True


_QUIET = _QuietSimulatedDisconnect()


def count_pieces(text: str) -> int:
    return len(_PIECE.findall(text))


def prompt_tokens(req: GenerationRequest) -> int:
    if req.messages is not None:
        return sum(count_pieces(message_text(m)) for m in req.messages)
    return count_pieces(req.prompt or "")


def request_digest(req: GenerationRequest) -> bytes:
    hashed = {k: v for k, v in req.body.items() if k not in _UNHASHED}
    return hashlib.sha256(orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS)).digest()


def answer_pieces(digest: bytes, index: int, length: int) -> list[str]:
    """`length` word-ish pieces of plausible text, a pure function of (digest, index)."""
    rng = random.Random(int.from_bytes(digest, "big") ^ (index * 0x9E3779B97F4A7C15))
    pieces: list[str] = []
    sentence = 0
    while len(pieces) < length:
        word = rng.choice(_WORDS)
        if sentence == 0:
            pieces.append(("" if not pieces else " ") + word.capitalize())
        else:
            pieces.append(" " + word)
        sentence += 1
        if sentence >= 6 and rng.random() < 0.25:
            pieces.append(".")
            sentence = 0
        elif sentence >= 3 and rng.random() < 0.08:
            pieces.append(",")
    return pieces[:length]


@dataclass(frozen=True, slots=True)
class PlannedChoice:
    """What one choice will emit: its text pieces, tool call, finish and token count."""

    index: int
    pieces: tuple[str, ...]
    finish_reason: FinishReason
    completion_tokens: int
    tool_call: ToolCall | None = None

    @property
    def steps(self) -> int:
        return len(self.pieces)


def plan_text(digest: bytes, index: int, natural: int, req: GenerationRequest) -> PlannedChoice:
    limit = natural if req.max_tokens is None else min(natural, req.max_tokens)
    finish: FinishReason = "length" if limit < natural else "stop"
    pieces = answer_pieces(digest, index, limit)
    if req.stop:
        text = ""
        for k, p in enumerate(pieces):
            text += p
            kept, hit = cut_at_stop(text, req.stop)
            if hit:
                out, left = [], kept
                for q in pieces[:k + 1]:
                    if not left:
                        break
                    out.append(left[:len(q)])
                    left = left[len(q):]
                return PlannedChoice(index, tuple(out), "stop", k + 1)
    return PlannedChoice(index, tuple(pieces), finish, len(pieces))


def plan_tool_call(digest: bytes, index: int) -> PlannedChoice:
    rng = random.Random(int.from_bytes(digest, "big") + index)
    args = orjson.dumps({"location": rng.choice(_CITIES), "unit": "celsius"}).decode()
    call = ToolCall(id=f"call_{hashlib.sha256(digest + bytes([index % 256])).hexdigest()[:24]}",
                    name="get_weather", arguments=args)
    fragments = tuple(args[i:i + 6] for i in range(0, len(args), 6))
    return PlannedChoice(index, fragments, "tool_calls", len(fragments) + 1, call)


class SimulatedBackend:
    """The request handling behind the routes; holds the timing and the request count."""

    def __init__(self, ttft_ms: float, tokens_per_s: float) -> None:
        self.ttft = max(0.0, ttft_ms) / 1000.0
        self.per_token = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.requests = 0

    async def handle(self, route: Route, request: Request) -> Response:
        try:
            req = parse_request(route, await request.body(), max_n=128)
        except RequestError as exc:
            return JSONResponse(error_body(exc.message, param=exc.param, code=exc.code), 400)
        try:
            natural = int(request.headers.get("x-sim-answer-tokens", DEFAULT_ANSWER_TOKENS))
        except ValueError:
            return JSONResponse(error_body("X-Sim-Answer-Tokens must be an integer"), 400)
        self.requests += 1
        fail = request.headers.get("x-sim-fail", "").strip().lower()
        if fail.isdigit() and 400 <= int(fail) <= 599:
            await asyncio.sleep(self.ttft)
            status = int(fail)
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return JSONResponse(error_body(f"simulated failure ({status})", type=kind,
                                           code=str(status)), status)
        digest = request_digest(req)
        tool = route == "chat" and request.headers.get("x-sim-tool-call", "") == "1"
        plans = [plan_tool_call(digest, i) if tool else plan_text(digest, i, max(natural, 0), req)
                 for i in range(req.n)]
        usage = Usage(prompt_tokens(req), sum(p.completion_tokens for p in plans))
        fmt = ResponseFormat(route, req.model, FINGERPRINT)
        drop = fail == "mid-stream"
        if req.stream:
            return StreamingResponse(self._stream(fmt, plans, usage, req.include_usage, drop),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        steps = max(p.completion_tokens for p in plans)
        await asyncio.sleep(self.ttft + steps * self.per_token)
        body = orjson.dumps(fmt.body([_finished(p) for p in plans], usage))
        if drop:
            return StreamingResponse(_drop_after(body[:len(body) // 2]),
                                     media_type="application/json")
        return Response(body, media_type="application/json")

    async def _stream(self, fmt: ResponseFormat, plans: list[PlannedChoice], usage: Usage,
                      include_usage: bool, drop: bool) -> AsyncIterator[bytes]:
        start = time.monotonic()
        await asyncio.sleep(self.ttft)
        for p in plans:
            if p.tool_call is not None:
                yield sse(fmt.tool_call_chunk(p.index, 0, call=p.tool_call))
            elif (role := fmt.role_chunk(p.index)) is not None:
                yield sse(role)
        for step in range(max(p.steps for p in plans)):
            if drop and step == MID_STREAM_CHUNKS:
                raise SimulatedDisconnect("simulated mid-stream failure")
            delay = start + self.ttft + step * self.per_token - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for p in plans:
                if step < p.steps:
                    if p.tool_call is not None:
                        yield sse(fmt.tool_call_chunk(p.index, 0, arguments=p.pieces[step]))
                    else:
                        yield sse(fmt.text_chunk(p.index, p.pieces[step]))
                if step == p.steps - 1:
                    yield sse(fmt.finish_chunk(p.index, p.finish_reason))
        for p in plans:
            if p.steps == 0:
                yield sse(fmt.finish_chunk(p.index, p.finish_reason))
        if include_usage:
            yield sse(fmt.usage_chunk(usage))
        yield SSE_DONE


def _finished(p: PlannedChoice) -> Choice:
    if p.tool_call is not None:
        return Choice(p.index, None, p.finish_reason, (p.tool_call,))
    return Choice(p.index, "".join(p.pieces), p.finish_reason)


async def _drop_after(part: bytes) -> AsyncIterator[bytes]:
    yield part
    raise SimulatedDisconnect("simulated failure mid-body")


def create_app(ttft_ms: float, tokens_per_s: float) -> FastAPI:
    """The simulated server as an ASGI app (see the module docstring for its behaviour)."""
    backend = SimulatedBackend(ttft_ms, tokens_per_s)
    logger = logging.getLogger("uvicorn.error")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)
    app = FastAPI(title="stratacache simulated backend", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.backend = backend

    install_openai_routes(app, backend.handle, MODEL_ID)

    @app.get("/stats")
    async def stats() -> dict:
        return {"requests": backend.requests}

    return app


def serve(host: str, port: int, ttft_ms: float, tokens_per_s: float) -> None:
    """Run the simulated server until interrupted (blocking)."""
    uvicorn.run(create_app(ttft_ms, tokens_per_s), host=host, port=port, log_level="warning")
