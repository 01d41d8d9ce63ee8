"""`retention report`: since a date, completion per policy and per service, local purge
results per run and policy, and erasure requests; with `--overdue`, the list of overdue
events and the services they wait for."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.cli._app import (
    ExitCode,
    emit_json,
    err_console,
    load_settings,
    out_console,
    read_database,
)
from coordinator.clock import SystemClock
from coordinator.copies.backups import BackupHorizon
from coordinator.erasure.certificate import requests_since
from coordinator.purge.run_log import purge_results
from coordinator.settings import Settings
from coordinator.tracking import queries
from coordinator.tracking.overdue import Cursor, overdue_page

__all__ = ["report"]

_COLUMNS = ("events", "completed", "failed", "overdue", "pending", "median_seconds", "p95_seconds")
# One CSV table for every section: each row fills the columns of its scope.
_PURGE_COLUMNS = ("run_id", "started_at", "action", "legal_basis", "status", "processed", "held")
_REQUEST_COLUMNS = ("regulation", "received_at", "due_at", "completed_at", "overdue")
_OVERDUE_COLUMNS = (
    "entity_type",
    "entity_id",
    "policy",
    "service",
    "status",
    "deadline",
    "overdue_at",
    "last_ack_at",
    "attempt",
    "reminders_sent",
    "event_id",
)
# Pages read for the overdue list: each is one keyset query, however long the list.
_OVERDUE_PAGE = 1000
_VERIFY_COLUMNS = ("verified", "still_present", "unsupported", "failed", "pending")
"""Answers to verify events per service (SPEC §12); `still_present` doubles as the count of
a service's reopened acknowledgements in its `service` row."""
_HEADER = (
    "scope",
    "name",
    *_COLUMNS,
    "waived",
    "resurrected",
    "verified",
    "still_present",
    "unsupported",
    "held",
    "reason",
    "rejected",
    *_PURGE_COLUMNS,
    "errors",
    *_REQUEST_COLUMNS,
)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def parse_since(text: str) -> datetime:
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        err_console.print(f"[red]bad --since {text!r}[/red]: expected a date like 2026-11-01")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    return since.replace(tzinfo=UTC) if since.tzinfo is None else since


def report(
    since: str | None = typer.Option(
        None,
        "--since",
        help="Events published from this DATE or DATETIME on (UTC by default). "
        "Required unless --overdue.",
    ),
    overdue: bool = typer.Option(
        False, "--overdue", help="List each overdue event and the services it waits for."
    ),
    service: str | None = typer.Option(
        None, "--service", help="With --overdue: only what this service has not acknowledged."
    ),
    fmt: Annotated[
        Format, typer.Option("--format", help="table (people), json or csv.")
    ] = Format.TABLE,
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Fan-out completion (events, completed, failed, overdue, median and p95 time to
    completion) per policy and service; local purge results per run and policy (processed,
    held, errors, action, legal basis); erasure requests (due, completed, per service).
    With --overdue: the overdue events themselves (entity, policy, service, deadline, last
    ack), oldest deadline first."""
    if overdue == (since is not None):
        err_console.print("[red]give either --since DATE or --overdue[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    if service is not None and not overdue:
        err_console.print("[red]--service goes with --overdue[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    if overdue:
        _overdue(load_settings(), service, Format.JSON if as_json else fmt)
        return
    assert since is not None
    start = parse_since(since)
    settings = load_settings()
    now = SystemClock().now()

    async def query(conn: AsyncConnection) -> dict[str, Any]:
        document = await queries.report(conn, since=start)
        document["purge_results"] = await purge_results(conn, since=start)
        document["erasure_requests"] = await requests_since(
            conn, since=start, now=now, backups=BackupHorizon.of(settings)
        )
        return document

    document = read_database(settings, query)
    if as_json or fmt is Format.JSON:
        emit_json(document)
    elif fmt is Format.CSV:
        _write_csv(document)
    else:
        _print_tables(document)


def _overdue(settings: Settings, service: str | None, fmt: Format) -> None:
    now = SystemClock().now()

    async def query(conn: AsyncConnection) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        after: Cursor | None = None
        while True:
            page = await overdue_page(
                conn, service=service, after=after, limit=_OVERDUE_PAGE, now=now
            )
            rows += page.items
            if page.next is None:
                return rows
            after = page.next

    rows = read_database(settings, query)
    if fmt is Format.JSON:
        emit_json({"service": service, "overdue": rows})
    elif fmt is Format.CSV:
        writer = csv.DictWriter(sys.stdout, fieldnames=_OVERDUE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: _blank(row[c]) for c in _OVERDUE_COLUMNS} for row in rows)
    else:
        table = Table(
            "entity", "policy", "service", "status", "deadline", "last ack", title="overdue"
        )
        for row in rows:
            table.add_row(
                f"{row['entity_type']}:{row['entity_id']}",
                row["policy"],
                row["service"],
                row["status"],
                row["deadline"],
                row["last_ack_at"] or "-",
            )
        out_console.print(table)


def _write_csv(document: dict[str, Any]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=_HEADER, lineterminator="\n", restval="")
    writer.writeheader()
    for scope, key in (("policy", "policies"), ("service", "services")):
        for row in document[key]:
            writer.writerow(
                {
                    "scope": scope,
                    "name": row[scope],
                    **{c: _blank(row[c]) for c in _COLUMNS},
                    "waived": _blank(row.get("waived")),
                    "resurrected": _blank(row.get("resurrected")),
                    "still_present": _blank(row.get("still_present")),
                    "held": _blank(row.get("held")),
                }
            )
    for row in document["verification"]:
        writer.writerow(
            {
                "scope": "verification",
                "name": row["service"],
                **{c: row[c] for c in ("verified", "still_present", "unsupported", "failed")},
                "pending": row["pending"],
            }
        )
    for row in document["rejected_acks"]:
        writer.writerow(
            {
                "scope": "rejected",
                "name": row["service"] or "",
                "reason": row["reason"],
                "rejected": row["count"],
            }
        )
    for row in document["purge_results"]:
        writer.writerow(
            {
                "scope": "purge",
                "name": row["policy"],
                "errors": row["errors"],
                **{c: _blank(row[c]) for c in _PURGE_COLUMNS},
            }
        )
    for row in document["erasure_requests"]:
        writer.writerow(
            {
                "scope": "erasure_request",
                "name": row["id"],
                "status": row["status"],
                **{c: _blank(row[c]) for c in _REQUEST_COLUMNS},
            }
        )


def _blank(value: object) -> object:
    return "" if value is None else value


def _print_tables(document: dict[str, Any]) -> None:
    for scope, key in (("policy", "policies"), ("service", "services")):
        columns = (
            (*_COLUMNS, "waived", "still_present", "held")
            if scope == "service"
            else (*_COLUMNS, "resurrected", "held")
        )
        table = Table(scope, *columns, title=f"per {scope} since {document['since']}")
        for row in document[key]:
            table.add_row(row[scope], *("-" if row[c] is None else str(row[c]) for c in columns))
        out_console.print(table)
    if document["verification"]:
        table = Table(
            "service",
            *_VERIFY_COLUMNS,
            title="answers to verify events (unsupported: no verify handler, no proof)",
        )
        for row in document["verification"]:
            table.add_row(row["service"], *(str(row[c]) for c in _VERIFY_COLUMNS))
        out_console.print(table)
    if document["rejected_acks"]:
        table = Table("claimed service", "reason", "count", title="rejected acks")
        for row in document["rejected_acks"]:
            table.add_row(row["service"] or "?", row["reason"], str(row["count"]))
        out_console.print(table)
    if document["purge_results"]:
        table = Table(
            "run",
            "policy",
            "action",
            "status",
            "processed",
            "held",
            "errors",
            "legal basis",
            title="local purge results",
        )
        for row in document["purge_results"]:
            table.add_row(
                row["run_id"][:8],
                row["policy"],
                row["action"],
                row["status"],
                str(row["processed"]),
                str(row["held"]),
                str(row["errors"]),
                row["legal_basis"] or "-",
            )
        out_console.print(table)
    if document["erasure_requests"]:
        table = Table(
            "request",
            "regulation",
            "status",
            "received",
            "due",
            "completed",
            "flags",
            title="erasure requests",
        )
        for row in document["erasure_requests"]:
            flags = ", ".join(name for name in ("overdue", "extended") if row[name])
            table.add_row(
                row["id"][:8],
                row["regulation"],
                row["status"],
                row["received_at"],
                row["due_at"],
                row["completed_at"] or "-",
                flags,
            )
        out_console.print(table)
