"""Bearer-token check for the write routes, in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coordinator.api._context import Context

__all__ = ["require_token"]

_bearer = HTTPBearer(
    auto_error=False,
    description="The value of RETENTION_API_TOKEN; required by every write route.",
)


def require_token(
    ctx: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = ctx.api_token.get_secret_value() if ctx.api_token is not None else ""
    if not expected:
        # An unset token must not mean "anyone may write".
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "writes are disabled: set RETENTION_API_TOKEN on the server to enable them",
        )
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <RETENTION_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
