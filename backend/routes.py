"""The OpenAI routes both backends serve, over one generation handler."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.openai_format import error_body

Generate = Callable[[str, Request], Awaitable[Response]]
"""(route: "chat" | "completion", request) -> response."""


def install_openai_routes(app: FastAPI, generate: Generate, model_id: str) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), exc.status_code)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate("completion", request)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                            "owned_by": "stratacache"}]}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}
