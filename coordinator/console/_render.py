"""Templates, the signed-in page context, and the formatting filters every page shares."""

# No `from __future__ import annotations`: the dependencies built in `_page` and `_form`
# annotate with their closure's variables, which FastAPI can only see evaluated.
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Form, Header, Request, status
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from coordinator.api._context import Context
from coordinator.api.auth import requires
from coordinator.api.tokens import Principal, Scope
from coordinator.console.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    Session,
    check_csrf,
    csrf_token,
    current_session,
    session_principal,
)

__all__ = ["AdminPage", "Page", "ReadForm", "ReadPage", "WritePage", "templates"]

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _utc(value: datetime | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: datetime | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _days(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


templates.env.filters.update(utc=_utc, iso=_iso, days=_days)


@dataclass(frozen=True, slots=True)
class Page:
    """A signed-in request: who, with which scope, and the CSRF token its forms carry."""

    request: Request
    principal: Principal
    csrf: str

    @property
    def can_write(self) -> bool:
        return self.principal.allows(Scope.WRITE)

    @property
    def can_admin(self) -> bool:
        return self.principal.allows(Scope.ADMIN)

    @property
    def partial(self) -> bool:
        """htmx asks for a fragment; a history restore after a cache miss wants the page."""
        headers = self.request.headers
        return headers.get("HX-Request") == "true" and not headers.get("HX-History-Restore-Request")

    def render(
        self, template: str, *, status_code: int = status.HTTP_200_OK, **values: Any
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            self.request,
            template,
            {
                "principal": self.principal,
                "csrf": self.csrf,
                "csrf_field": CSRF_FIELD,
                "csrf_header": CSRF_HEADER,
                "can_write": self.can_write,
                "can_admin": self.can_admin,
                **values,
            },
            status_code=status_code,
        )


def _page(scope: Scope) -> Any:
    principal_of = requires(scope, authenticate=session_principal)

    def page(
        request: Request,
        ctx: Context,
        principal: Annotated[Principal, Depends(principal_of)],
        session: Annotated[Session | None, Depends(current_session)],
    ) -> Page:
        # A principal from `session_principal` implies a session.
        assert session is not None
        return Page(request, principal, csrf_token(ctx, session))

    return page


def _form(scope: Scope) -> Any:
    def form(
        ctx: Context,
        page: Annotated[Page, Depends(_page(scope))],
        session: Annotated[Session | None, Depends(current_session)],
        form_csrf: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
        header_csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
    ) -> Page:
        # Scope first: a read token posting a write form gets 403 for its scope.
        check_csrf(ctx, session, form_csrf or header_csrf)
        return page

    return form


ReadPage = Annotated[Page, Depends(_page(Scope.READ))]
"""A GET page: signed in with at least `read`."""
ReadForm = Annotated[Page, Depends(_form(Scope.READ))]
"""A post any signed-in token may make (sign-out), with the session's CSRF token."""
WritePage = Annotated[Page, Depends(_form(Scope.WRITE))]
"""A form post: signed in with at least `write`, and the session's CSRF token."""
AdminPage = Annotated[Page, Depends(_form(Scope.ADMIN))]
"""An admin form post (retire, waive): signed in with `admin`, and the session's CSRF token."""
