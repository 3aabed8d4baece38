"""The FastAPI application: routes translate HTTP to calls on `Services` and back."""
from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy import completions
from proxy.errors import error_response
from proxy.passthrough import passthrough
from proxy.services import Services, build_services
from proxy.settings import Settings

ServicesFactory = Callable[[Settings], Awaitable[Services]]


def create_app(settings: Settings, services_factory: ServicesFactory = build_services) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.svc = await services_factory(settings)
        try:
            yield
        finally:
            await app.state.svc.aclose()

    app = FastAPI(title="stratacache", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, str(exc.errors()[0].get("msg", "invalid request")))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    # The cached routes are plain Starlette routes: they take only the Request, so FastAPI's
    # per-request dependency solving would be pure overhead on the hit path.
    async def chat(request: Request) -> Response:
        return await completions.handle(request, "chat", request.app.state.svc)

    async def complete(request: Request) -> Response:
        return await completions.handle(request, "completion", request.app.state.svc)

    app.router.routes.append(Route("/v1/chat/completions", chat, methods=["POST"]))
    app.router.routes.append(Route("/v1/completions", complete, methods=["POST"]))

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def other(request: Request, path: str) -> Response:
        return await passthrough(request, request.app.state.svc.upstream)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        svc: Services = request.app.state.svc
        return JSONResponse({"ok": True, "l2": svc.cache.l2 is not None, "l3": svc.cache.semantic is not None})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.svc.metrics.render(), media_type="text/plain; version=0.0.4")

    from proxy.admin import install_admin

    install_admin(app)
    return app
