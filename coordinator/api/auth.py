"""Who a request acts as, and whether its scope allows the route (SPEC §10).

`requires(scope)` builds the FastAPI dependency a route (or a router) declares; it
answers the resolved `Principal`, whose name is the actor to record. The principal comes
from `authenticate`, by default the bearer token; a console with cookie sessions passes
its own authenticator and keeps the same 503/401/403 answers:

    ReadSession = Annotated[Principal, Depends(requires(Scope.READ, authenticate=session))]

Order of refusals: no usable tokens file → 503 naming the setting; no or unknown
credentials → 401; a scope too small → 403.
"""

# No `from __future__ import annotations`: `requires` annotates its inner dependency
# with its own argument, which FastAPI can only see as an evaluated annotation.
from collections.abc import Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coordinator.api._context import Context
from coordinator.api.tokens import Principal, Scope, TokensFileError, TokenStore

__all__ = [
    "ACCESS_RESPONSES",
    "Admin",
    "Authenticator",
    "Reader",
    "Writer",
    "bearer_principal",
    "require_read",
    "requires",
    "token_store",
]

log = structlog.get_logger("retention.api")

SETTING = "RETENTION_API_TOKENS_FILE"

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from RETENTION_API_TOKENS_FILE (`retention tokens create`); "
    "every /v1 route needs scope `read`, writes `write`, forcing a run `admin`.",
)

ACCESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or unknown bearer token"},
    403: {"description": "the token's scope does not allow this"},
    503: {"description": f"the API is closed: {SETTING} is not set or cannot be read"},
}


def token_store(ctx: Context) -> TokenStore:
    """The server's tokens; 503 naming the setting when there are none to check against."""
    if ctx.tokens is None:
        # No tokens file must never mean "anyone may read or write".
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the API is disabled: set {SETTING} on the server "
            "(create tokens with `retention tokens create NAME --scope read|write|admin`)",
        )
    return ctx.tokens


Tokens = Annotated[TokenStore, Depends(token_store)]
Authenticator = Callable[..., Principal | None]
"""A FastAPI dependency that names the caller, or answers None for no valid credential."""


def bearer_principal(
    tokens: Tokens,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    if credentials is None:
        return None
    try:
        return tokens.authenticate(credentials.credentials)
    except TokensFileError as exc:
        log.error("tokens_file_unusable", error=str(exc))
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the API is closed: {SETTING} cannot be read or is invalid (see the server log)",
        ) from None


def requires(
    scope: Scope, *, authenticate: Authenticator = bearer_principal
) -> Callable[..., Principal]:
    """A dependency that resolves the caller and checks that its scope includes `scope`."""

    def check(
        _tokens: Tokens, principal: Annotated[Principal | None, Depends(authenticate)]
    ) -> Principal:
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or unknown bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not principal.allows(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"token {principal.name!r} has scope {principal.scope.value}; "
                f"this needs {scope.value}",
            )
        return principal

    return check


require_read = requires(Scope.READ)
require_write = requires(Scope.WRITE)
require_admin = requires(Scope.ADMIN)

Reader = Annotated[Principal, Depends(require_read)]
Writer = Annotated[Principal, Depends(require_write)]
Admin = Annotated[Principal, Depends(require_admin)]
