"""The console's sign-in: a token exchanged for a signed session cookie (SPEC §14).

The cookie holds the token's SHA-256 (what the tokens file holds, never the token), an
expiry and a random session id, signed with HMAC-SHA256. Each request looks the hash up in
the tokens file as it is now, so revoking or re-scoping a token ends or changes its
sessions at once; the scope logic stays in `coordinator.api.tokens` and `coordinator.api.auth`.

Expiry is wall-clock time, not the coordinator's `Clock`: a test that moves the domain
clock a month ahead must not sign its browser out.

Write forms carry a CSRF token derived from the session id (HMAC with the same secret), so
a page of another site cannot make a signed-in browser post, even where SameSite=Strict is
not honoured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import structlog
from fastapi import Cookie, Depends, HTTPException, Request, status

from coordinator import CoordinatorError
from coordinator.api._context import Context
from coordinator.api.auth import bearer_principal, token_store
from coordinator.api.tokens import Principal, TokensFileError

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "MIN_SECRET_BYTES",
    "ConsoleSecretError",
    "Session",
    "SessionSigner",
    "bearer_or_session_for_get",
    "check_csrf",
    "csrf_token",
    "current_session",
    "load_secret",
    "session_principal",
]

log = structlog.get_logger("retention.console")

COOKIE = "retention_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MIN_SECRET_BYTES = 32
SETTING = "RETENTION_UI_SECRET_FILE"


class ConsoleSecretError(CoordinatorError, ValueError):
    """RETENTION_UI_SECRET_FILE is set but cannot be read or is too short."""


def load_secret(path: Path | None) -> bytes:
    """The signing secret from `path`, or a fresh random one when there is no file.

    Raises:
        ConsoleSecretError: the file cannot be read or holds fewer than `MIN_SECRET_BYTES`.
    """
    if path is None:
        return secrets.token_bytes(MIN_SECRET_BYTES)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConsoleSecretError(
            f"{SETTING}: cannot read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConsoleSecretError(f"{SETTING}: needs at least {MIN_SECRET_BYTES} bytes")
    return secret


@dataclass(frozen=True, slots=True)
class Session:
    token_sha256: str
    expires_at: float
    session_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Makes and checks session cookie values with one secret."""

    def __init__(self, secret: bytes, *, lifetime_s: float) -> None:
        self._secret = secret
        self.lifetime_s = lifetime_s

    def _mac(self, purpose: bytes, payload: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\x00" + payload, hashlib.sha256).digest()

    def issue(self, token_sha256: str, *, now: float | None = None) -> tuple[str, Session]:
        started = time.time() if now is None else now
        session = Session(token_sha256, started + self.lifetime_s, secrets.token_urlsafe(16))
        payload = json.dumps(
            {"h": session.token_sha256, "e": session.expires_at, "s": session.session_id},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}", session

    def read(self, value: str, *, now: float | None = None) -> Session | None:
        """The session a cookie value carries; None if forged, malformed or expired."""
        try:
            encoded, mac = value.split(".", 1)
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(mac), self._mac(b"session", payload)):
                return None
            fields = json.loads(payload)
            session = Session(str(fields["h"]), float(fields["e"]), str(fields["s"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= (time.time() if now is None else now):
            return None
        return session

    def csrf(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.session_id.encode()))


def _signer(ctx: Context) -> SessionSigner:
    return SessionSigner(ctx.ui_secret, lifetime_s=ctx.ui_session_s)


def current_session(
    ctx: Context,
    cookie: Annotated[str | None, Cookie(alias=COOKIE, include_in_schema=False)] = None,
) -> Session | None:
    return _signer(ctx).read(cookie) if cookie else None


def session_principal(
    ctx: Context, session: Annotated[Session | None, Depends(current_session)]
) -> Principal | None:
    """The signed-in token as the tokens file names and scopes it now; None without one."""
    if session is None:
        return None
    try:
        return token_store(ctx).by_hash(session.token_sha256)
    except TokensFileError as exc:
        log.error("tokens_file_unusable", error=str(exc))
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the console is closed: RETENTION_API_TOKENS_FILE cannot be read or is invalid",
        ) from None


def bearer_or_session_for_get(
    request: Request,
    bearer: Annotated[Principal | None, Depends(bearer_principal)],
    session: Annotated[Principal | None, Depends(session_principal)],
) -> Principal | None:
    """A bearer token, or the console's cookie on a GET (SPEC §10): a list page's
    "JSON" link opens in the signed-in browser, while no cookie ever authorises a write."""
    if bearer is not None:
        return bearer
    return session if request.method in ("GET", "HEAD") else None


def csrf_token(ctx: Context, session: Session) -> str:
    return _signer(ctx).csrf(session)


def check_csrf(ctx: Context, session: Session | None, given: str | None) -> None:
    """403 unless `given` is this session's CSRF token."""
    if session is None or not given or not hmac.compare_digest(given, csrf_token(ctx, session)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or stale: reload the page"
        )
