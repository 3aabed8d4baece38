"""The reference generation server: OpenAI-compatible HTTP over an `HFEngine`.

Same routes and shapes as the simulated backend: POST /v1/chat/completions and
/v1/completions (stream and non-stream), GET /v1/models, GET /healthz, and GET /stats
(engine counters: requests, running rows, waiting requests, cancelled requests, peak batch rows).

Accepted fields: model (echoed back), messages / prompt, max_tokens or
max_completion_tokens, temperature (0 = greedy), top_p, seed (choice i of `n` uses
seed + i), stop, n, stream, stream_options.include_usage, and the vLLM extension
`ignore_eos` (keep generating past end-of-sequence, for benchmarks). Other fields are
ignored. Malformed requests get 400, a full queue 503, all in the OpenAI error shape.
A failure after a stream has started is sent as an SSE error frame, then [DONE].
Closing the connection cancels the request: its rows leave the batch before the next step.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backend.hf_engine import (
    EngineOverloaded, Failed, Finished, Generation, HFEngine, TextDelta,
)
from backend.routes import install_openai_routes
from backend.openai_format import (
    SSE_DONE, Choice, RequestError, ResponseFormat, Route, Usage, error_body, parse_request,
    sse,
)

FINGERPRINT = "stratacache-hf"


def _bad_request(exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, param=exc.param, code=exc.code), 400)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Routes:
    """Translates HTTP to engine calls and engine events to OpenAI responses."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine

    async def generate(self, route: Route, request: Request) -> Response:
        try:
            req = parse_request(route, await request.body())
            ignore_eos = req.body.get("ignore_eos", False)
            if not isinstance(ignore_eos, bool):
                raise RequestError("'ignore_eos' must be a boolean", param="ignore_eos")
            gen = self.engine.submit(req, ignore_eos=ignore_eos)
        except RequestError as exc:
            return _bad_request(exc)
        except EngineOverloaded as exc:
            return JSONResponse(error_body(str(exc), type="server_error", code="overloaded"), 503)
        fmt = ResponseFormat(route, req.model, FINGERPRINT)
        if req.stream:
            return StreamingResponse(self._stream(fmt, gen, req.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await self._complete(fmt, gen, request)

    async def _complete(self, fmt: ResponseFormat, gen: Generation, request: Request) -> Response:
        texts = [""] * gen.n
        choices: list[Choice] = []
        tokens = 0

        async def collect() -> Failed | None:
            nonlocal tokens
            async for event in gen.events():
                if isinstance(event, TextDelta):
                    texts[event.index] += event.text
                elif isinstance(event, Finished):
                    tokens += event.completion_tokens
                    choices.append(Choice(event.index, texts[event.index], event.finish_reason))
                else:
                    return event
            return None

        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                gen.cancel()
        if not work.done() or work.cancelled():
            return Response(status_code=499)  # the client is gone; nobody reads this
        failed = work.result()
        if failed is not None:
            return JSONResponse(error_body(failed.message, type="server_error"), 500)
        choices.sort(key=lambda c: c.index)
        body = fmt.body(choices, Usage(gen.prompt_tokens, tokens))
        return Response(orjson.dumps(body), media_type="application/json")

    async def _stream(self, fmt: ResponseFormat, gen: Generation,
                      include_usage: bool) -> AsyncIterator[bytes]:
        tokens = 0
        try:
            for i in range(gen.n):
                role = fmt.role_chunk(i)
                if role is not None:
                    yield sse(role)
            async for event in gen.events():
                if isinstance(event, TextDelta):
                    yield sse(fmt.text_chunk(event.index, event.text))
                elif isinstance(event, Finished):
                    tokens += event.completion_tokens
                    yield sse(fmt.finish_chunk(event.index, event.finish_reason))
                else:
                    yield sse(error_body(event.message, type="server_error"))
                    yield SSE_DONE
                    return
            if include_usage:
                yield sse(fmt.usage_chunk(Usage(gen.prompt_tokens, tokens)))
            yield SSE_DONE
        finally:
            gen.cancel()  # a no-op once finished; frees the rows when the client left


def create_app_for_engine(engine: HFEngine, model_id: str) -> FastAPI:
    """The HTTP app over an already loaded engine; runs its scheduler while serving."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(engine.run(), name="hf-engine-scheduler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="stratacache reference backend", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    routes = Routes(engine)
    app.state.engine = engine

    install_openai_routes(app, routes.generate, model_id)

    @app.get("/stats")
    async def stats() -> dict:
        return engine.stats()

    return app


def create_app(model_path: str, device: str = "auto", dtype: str = "auto",
               max_batch: int = 8) -> FastAPI:
    """Load the model at `model_path` (raises `ModelLoadError`) and build the app."""
    engine = HFEngine.load(model_path, device, dtype, max_batch=max_batch)
    return create_app_for_engine(engine, Path(model_path).resolve().name)


def serve(model_path: str, host: str, port: int, device: str = "auto", dtype: str = "auto",
          max_batch: int = 8) -> None:
    """Load the model and serve it until interrupted (blocking)."""
    app = create_app(model_path, device, dtype, max_batch)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.engine.close()
