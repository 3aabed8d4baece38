"""Admin API under /admin, behind a bearer admin token (off when none is configured).

POST /admin/invalidate takes one JSON object with any of
  {"request": {...}}            purge that exact request (every tenant, or the given tenant)
  {"tags": [...]}               entries stored with any of these X-Cache-Tags
  {"model": "..."}, {"namespace": "..."}, {"tenant": "..."}, {"older_than_s": N}
  {"similar_to": "text", "min_similarity": 0.9}   entries whose semantic text means the same
  {"all": true}
Criteria given together narrow each other (AND). It answers {"invalidated": N}: the
entries this replica removed from the shared layers at once. Other replicas drop matching
L1 entries before the call returns, and every hit re-checks active bans, so N can
under-count entries that were only in other replicas' memory: treat it as an estimate.
GET /admin/stats answers entries, bytes, hits and misses per layer.
"""
from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.responses import JSONResponse, Response

from policies.keys import request_keys
from proxy.errors import error_response
from proxy.protocol import InvalidRequest, validate


class InvalidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: dict | None = None
    tags: list[str] | None = Field(default=None, min_length=1)
    model: str | None = None
    namespace: str | None = None
    tenant: str | None = Field(default=None, description="tenant id as logged (a hash of the API key)")
    older_than_s: float | None = Field(default=None, ge=0)
    similar_to: str | None = Field(default=None, min_length=1)
    min_similarity: float = Field(default=0.9, gt=0, le=1)
    all: bool = False

    @model_validator(mode="after")
    def _something(self) -> "InvalidateRequest":
        if not (self.request or self.tags or self.model is not None or self.namespace is not None
                or self.tenant is not None or self.older_than_s is not None or self.similar_to or self.all):
            raise ValueError("give at least one of request, tags, model, namespace, tenant, older_than_s, "
                             "similar_to, all")
        return self


def _authorised(request: Request, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def install_admin(app: FastAPI) -> None:
    def gate(request: Request) -> Response | None:
        token = request.app.state.svc.settings.admin_token
        if not token:
            return error_response(404, "the admin API is off: set STRATACACHE_ADMIN_TOKEN or admin_token",
                                  code="admin_disabled")
        if not _authorised(request, token):
            return error_response(401, "a valid admin bearer token is required", "authentication_error",
                                  code="invalid_admin_token", headers={"www-authenticate": "Bearer"})
        return None

    @app.post("/admin/invalidate")
    async def invalidate(request: Request) -> Response:
        if (denied := gate(request)) is not None:
            return denied
        svc = request.app.state.svc
        try:
            spec = InvalidateRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            err = exc.errors()[0]
            return error_response(400, f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}")
        inv = svc.invalidator
        total = 0
        criteria: dict = {}
        if spec.request is not None:
            route = "chat" if "messages" in spec.request else "completion"
            try:
                validate(route, spec.request)
            except InvalidRequest as exc:
                return error_response(400, f"request.{exc}", param=f"request.{exc.param}")
            criteria["request_digest"] = request_keys(tenant="", namespace="", route=route,
                                                      body=spec.request).request_digest
        if spec.tags:
            criteria["tags"] = tuple(spec.tags)
        for f in ("model", "namespace", "tenant"):
            if getattr(spec, f) is not None:
                criteria[f] = getattr(spec, f)
        if spec.older_than_s is not None:
            criteria["created_before"] = svc.clock() - spec.older_than_s
        if spec.similar_to:
            total += await inv.purge_similar(spec.similar_to, spec.min_similarity, tenant=spec.tenant)
            criteria.pop("tenant", None)  # it narrowed the purge; it is not a ban of its own
        if spec.all and not criteria:
            criteria["everything"] = True
        if criteria:
            total += await inv.ban(inv.new_ban(**criteria))
        return JSONResponse({"invalidated": total})

    @app.get("/admin/stats")
    async def stats(request: Request) -> Response:
        if (denied := gate(request)) is not None:
            return denied
        return JSONResponse(await request.app.state.svc.stats())
