"""Mounts the console on the API's FastAPI app: pages, static assets, HTML error pages and
the security headers of every `/ui` answer."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from coordinator.console._render import HERE, templates
from coordinator.console.pages import entities, erasure, holds, overview, runs, services, sign_in

__all__ = ["PREFIX", "mount_console"]

PREFIX = "/ui"
ROUTERS = (
    sign_in.router,
    overview.router,
    runs.router,
    holds.router,
    erasure.router,
    services.router,
    entities.router,
)

# Scripts only from our own origin (htmx, Chart.js and console.js are served by `serve`);
# Chart.js sizes its canvas through inline styles, hence 'unsafe-inline' for styles only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(PREFIX):
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            if not request.url.path.startswith(f"{PREFIX}/static/"):
                # Pages name entities and hold reasons: never kept by a shared cache.
                response.headers["Cache-Control"] = "no-store"
        return response


def _is_ui(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not _is_ui(request):
        return await http_exception_handler(request, exc)
    if exc.status_code == status.HTTP_401_UNAUTHORIZED and request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"{PREFIX}/sign-in?next={quote(target, safe='')}", status.HTTP_303_SEE_OTHER
        )
    return _error_page(request, exc.status_code, str(exc.detail))


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not _is_ui(request):
        return await request_validation_exception_handler(request, exc)
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
    return _error_page(request, status.HTTP_422_UNPROCESSABLE_CONTENT, where)


def _error_page(request: Request, code: int, detail: str) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"code": code, "detail": detail, "principal": None},
        status_code=code,
    )


def mount_console(app: FastAPI) -> None:
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for router in ROUTERS:
        app.include_router(router, include_in_schema=False)

    @app.get(PREFIX, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status.HTTP_308_PERMANENT_REDIRECT)

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_middleware(_SecurityHeaders)
