"""`retention requests`: erasure requests (SPEC §11)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.cli._app import ExitCode, actor, emit_json, err_console, load_settings, out_console
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.clock import SystemClock
from coordinator.copies.backups import BackupHorizon
from coordinator.erasure import certificate as certificates
from coordinator.erasure import requests
from coordinator.erasure.due import Regulation
from coordinator.erasure.service import Erasure
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = ["app"]

app = typer.Typer(help="Erasure requests: a subject's data, everywhere.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="One JSON document on stdout.")
BY_OPTION = typer.Option(..., "--by", help="Who acts (recorded with the OS user).")
REGULATION_OPTION = typer.Option(..., "--regulation", help="gdpr, ccpa or other.")
RECEIVED_OPTION = typer.Option(
    None, "--received-at", help="When the request arrived (default: now); with a zone."
)
STATUS_OPTION = typer.Option(None, "--status", help="Only this status.")
T = TypeVar("T")


def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=2)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except requests.RequestNotFound as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.ERRORS) from None
    except requests.ErasureError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None


def _request_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        err_console.print(f"[red]bad request id {text!r}[/red]: expected a UUID")
        raise typer.Exit(ExitCode.BAD_INPUT) from None


def _print(document: dict[str, Any]) -> None:
    for key in ("id", "subject", "regulation", "reference", "status", "received_at", "due_at"):
        out_console.print(f"  {key}: {document[key]}", markup=False, highlight=False)
    flags = [name for name in ("overdue", "extended") if document[name]]
    if flags:
        out_console.print(f"  flags: {', '.join(flags)}", markup=False, highlight=False)
    if document["holds"]:
        out_console.print(f"  held by: {', '.join(document['holds'])}", markup=False)
    if "policies" in document:
        table = Table("policy", "table", "action", "outcome", "rows", "held", "basis")
        for p in document["policies"]:
            table.add_row(
                p["policy"],
                p["table"],
                p["action"],
                p["outcome"],
                str(p["rows"]),
                str(p["held"]),
                p["exemption_basis"] or p["legal_basis"],
            )
        out_console.print(table)
    if document.get("services"):
        table = Table("service", "events", "acknowledged", "pending", "failed", "last ack")
        for s in document["services"]:
            table.add_row(
                s["service"],
                str(s["events"]),
                str(s["acknowledged"]),
                str(s["pending"]),
                str(s["failed"]),
                s["last_ack_at"] or "-",
            )
        out_console.print(table)


@app.command("create")
def create(
    subject: str = typer.Argument(..., metavar="TYPE:ID", help="The data subject, e.g. user:42."),
    regulation: Regulation = REGULATION_OPTION,
    received_at: datetime | None = RECEIVED_OPTION,
    reference: str | None = typer.Option(
        None, "--reference", help="Your ticket id; the same reference twice is one request."
    ),
    by: str = BY_OPTION,
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """File an erasure request and act on it now: every mapped table, then the fan-out."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    if received_at is not None and received_at.tzinfo is None:
        err_console.print("[red]--received-at needs a timezone, e.g. 2027-01-31T09:00:00Z[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    clock = SystemClock()

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        erasure = Erasure(engine, policy_set, settings, clock)
        request, created = await erasure.create(
            subject=subject,
            regulation=regulation,
            received_at=received_at,
            reference=reference,
            by=actor(by),
        )
        async with engine.connect() as conn:
            document = await certificates.detail(conn, request.id, now=clock.now())
        return {**document, "created": created}

    document = _with_engine(settings, work)
    if as_json:
        emit_json(document)
        return
    verb = "created" if document["created"] else "already filed under this reference"
    out_console.print(f"erasure request [bold]{document['id']}[/bold] {verb}")
    _print(document)


@app.command("list")
def list_(
    status: requests.Status | None = STATUS_OPTION,
    overdue: bool = typer.Option(False, "--overdue", help="Only overdue requests."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Requests by due date, soonest first."""
    settings = load_settings()
    now = SystemClock().now()

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            found = await requests.list_requests(conn, now=now, status=status, overdue=overdue)
        return [r.as_dict(now) for r in found]

    found = _with_engine(settings, work)
    if as_json:
        emit_json({"requests": found})
        return
    table = Table("id", "subject", "regulation", "status", "received", "due", "flags")
    for r in found:
        flags = ", ".join(name for name in ("overdue", "extended") if r[name])
        table.add_row(
            r["id"],
            r["subject"],
            r["regulation"],
            r["status"],
            r["received_at"],
            r["due_at"],
            flags,
        )
    out_console.print(table)


@app.command("show")
def show(request_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPTION) -> None:
    """One request: per policy rows affected or exempt, per service acknowledgements."""
    settings = load_settings()
    rid = _request_id(request_id)
    now = SystemClock().now()

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.connect() as conn:
            return await certificates.detail(conn, rid, now=now)

    document = _with_engine(settings, work)
    if as_json:
        emit_json(document)
    else:
        _print(document)


@app.command("extend")
def extend(
    request_id: str = typer.Argument(..., metavar="ID"),
    reason: str = typer.Option(..., "--reason", help="Why more time is needed."),
    by: str = BY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Extend the due date once (GDPR: 3 months from receipt; CCPA: 90 days)."""
    settings = load_settings()
    rid = _request_id(request_id)
    now = SystemClock().now()

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.begin() as conn:
            request = await requests.extend_request(
                conn,
                rid,
                reason=reason,
                by=actor(by),
                now=now,
                default_days=settings.erasure_default_days,
            )
        return request.as_dict(now)

    document = _with_engine(settings, work)
    if as_json:
        emit_json(document)
    else:
        out_console.print(f"request {document['id']} now due {document['due_at']}")


@app.command("reject")
def reject(
    request_id: str = typer.Argument(..., metavar="ID"),
    reason: str = typer.Option(..., "--reason", help="Why, e.g. identity not verified."),
    by: str = BY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Reject a request that is not completed (what it already erased stays erased)."""
    settings = load_settings()
    rid = _request_id(request_id)
    now = SystemClock().now()

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.begin() as conn:
            request = await requests.reject_request(conn, rid, reason=reason, by=actor(by), now=now)
        return request.as_dict(now)

    document = _with_engine(settings, work)
    if as_json:
        emit_json(document)
    else:
        out_console.print(f"request {document['id']} rejected")


@app.command("certificate")
def certificate(
    request_id: str = typer.Argument(..., metavar="ID"),
    output_format: str = typer.Option("json", "--format", help="json or html."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The request's certificate; `--format html` for a printable page."""
    if output_format not in ("json", "html"):
        err_console.print(f"[red]--format {output_format!r}: use json or html[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    settings = load_settings()
    rid = _request_id(request_id)
    now = SystemClock().now()

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.connect() as conn:
            return await certificates.certificate(
                conn, rid, now=now, backups=BackupHorizon.of(settings)
            )

    document = _with_engine(settings, work)
    if output_format == "html" and not as_json:
        typer.echo(certificates.render_html(document), nl=False)
    else:
        emit_json(document)
