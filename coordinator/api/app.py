"""The FastAPI application of `retention serve` (SPEC §7)."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from coordinator.api import holds, ops, policies, runs, services, tracking
from coordinator.api._context import ApiContext

__all__ = ["create_app"]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="retention-fanout",
        summary="Retention policies, runs, legal holds and per-service completion.",
        version="1",
    )
    app.state.context = ctx
    app.include_router(ops.router)
    app.include_router(policies.router)
    app.include_router(runs.router)
    app.include_router(holds.router)
    app.include_router(tracking.router)
    app.include_router(services.router)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"database unavailable ({type(exc).__name__})"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    return app
