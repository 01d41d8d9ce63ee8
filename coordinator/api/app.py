"""The FastAPI application of `retention serve` (SPEC §7, access per §10)."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from coordinator.api import (
    archive,
    erasure,
    holds,
    notifications,
    ops,
    policies,
    republish,
    runs,
    services,
    tracking,
)
from coordinator.api._context import ApiContext
from coordinator.api.auth import ACCESS_RESPONSES, requires
from coordinator.api.limits import BodyLimit
from coordinator.api.tokens import Scope

__all__ = ["create_app"]

# Every router under /v1: each of its routes needs at least a `read` token.
V1_ROUTERS = (
    policies.router,
    archive.router,
    runs.router,
    holds.router,
    tracking.router,
    erasure.router,
    services.router,
    notifications.router,
    republish.router,
)


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="retention-fanout",
        summary="Retention policies, runs, legal holds and per-service completion.",
        description="Every `/v1` route needs a bearer token of scope `read` or more; writes "
        "need `write`. The token's name is the actor recorded for every write: fields such "
        "as `created_by` or `by` are ignored. `/healthz` and `/metrics` are open and reveal "
        "no entity ids, hold reasons or error texts. Request bodies over 1 MiB get 413.",
        version="1",
    )
    # Imported here: the console's modules import this package's context and auth.
    from coordinator.console import mount_console
    from coordinator.console.sessions import bearer_or_session_for_get

    app.state.context = ctx
    app.include_router(ops.router)
    # A GET may also carry the console's session cookie, so its "JSON" links open in the
    # signed-in browser; writes still need the bearer token (their own `Writer`).
    require_read = requires(Scope.READ, authenticate=bearer_or_session_for_get)
    for router in V1_ROUTERS:
        app.include_router(router, dependencies=[Depends(require_read)], responses=ACCESS_RESPONSES)
    mount_console(app)
    app.add_middleware(BodyLimit)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"database unavailable ({type(exc).__name__})"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    return app
