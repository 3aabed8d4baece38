"""The ASGI application: routes translate HTTP to calls on `Services` and back.

The two cached routes are served by `CachedRoutes`, in front of FastAPI: every request a
cache answers goes through them, and FastAPI's middleware stack (error, exception,
telemetry, body-limit and exit-stack layers, each wrapping `send`) and router cost them
about 0.07-0.1 ms each here, a fifth of an L1 hit. Everything else (admin, metrics,
pass-through) is the FastAPI app.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from proxy import completions
from proxy.errors import error_response
from proxy.passthrough import passthrough
from proxy.services import Services, build_services
from proxy.settings import Settings

ServicesFactory = Callable[[Settings], Awaitable[Services]]
CACHED_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}

log = logging.getLogger(__name__)


class CachedRoutes:
    """ASGI: POST to a cached route goes to `proxy.completions.handle`; anything else
    (other methods and paths, lifespan) to the FastAPI app, whose `state` holds the services.
    What FastAPI's error middleware did for these routes is done here: an exception before
    the response is made is logged and answered with a 500 in the OpenAI shape."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = CACHED_ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # what Starlette sets: Request.app
        try:
            response = await completions.handle(Request(scope, receive), route, self.app.state.svc)
        except ClientDisconnect:
            return  # gone before its request was read: nobody to answer
        except Exception as exc:  # a bug must still answer in the OpenAI shape
            log.exception("unexpected error on %s", scope["path"])
            response = error_response(500, f"internal error: {type(exc).__name__}", "server_error")
        await response(scope, receive, send)


def create_app(settings: Settings, services_factory: ServicesFactory = build_services) -> CachedRoutes:
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
    return CachedRoutes(app)
