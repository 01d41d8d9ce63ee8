"""Sign-in (a token for a session cookie) and sign-out."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from coordinator.api._context import Context
from coordinator.api.auth import token_store
from coordinator.api.tokens import TokensFileError, hash_token
from coordinator.console._render import ReadForm, templates
from coordinator.console.sessions import COOKIE, SessionSigner

__all__ = ["router"]

log = structlog.get_logger("retention.console")

router = APIRouter(prefix="/ui")


def _safe_next(target: str | None) -> str:
    # Only a path of this console: never an absolute or scheme-relative URL elsewhere.
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, ctx: Context, next: str | None = None) -> Response:
    token_store(ctx)  # 503 naming the setting when the server has no tokens file
    return templates.TemplateResponse(
        request, "sign_in.html", {"next": _safe_next(next), "error": None, "principal": None}
    )


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    ctx: Context,
    token: Annotated[str, Form(max_length=500)],
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        # Sign-in has no session to carry a CSRF token yet: refuse a form another site
        # posts, which could sign this browser in as the other site's token.
        raise HTTPException(status.HTTP_403_FORBIDDEN, "sign in from the console's own page")
    try:
        principal = token_store(ctx).authenticate(token.strip())
    except TokensFileError as exc:
        log.error("tokens_file_unusable", error=str(exc))
        principal = None
    if principal is None:
        return templates.TemplateResponse(
            request,
            "sign_in.html",
            {"next": _safe_next(next), "error": "That token is not valid.", "principal": None},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    signer = SessionSigner(ctx.ui_secret, lifetime_s=ctx.ui_session_s)
    value, _ = signer.issue(hash_token(token.strip()))
    log.info("console_sign_in", token=principal.name, scope=principal.scope.value)
    response = RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(ctx.ui_session_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/sign-out")
async def sign_out(page: ReadForm) -> Response:
    response = RedirectResponse("/ui/sign-in", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
