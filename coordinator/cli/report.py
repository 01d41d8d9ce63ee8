"""`retention report`: completion per policy and per service since a date."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from coordinator.cli._app import (
    ExitCode,
    emit_json,
    err_console,
    load_settings,
    out_console,
    read_database,
)
from coordinator.tracking import queries

__all__ = ["report"]

_COLUMNS = ("events", "completed", "failed", "overdue", "pending", "median_seconds", "p95_seconds")


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
    since: str = typer.Option(
        ..., "--since", help="Events published from this DATE or DATETIME on (UTC by default)."
    ),
    fmt: Annotated[
        Format, typer.Option("--format", help="table (people), json or csv.")
    ] = Format.TABLE,
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Events, completed, failed, overdue, median and p95 time to completion."""
    start = parse_since(since)
    settings = load_settings()
    document = read_database(settings, lambda conn: queries.report(conn, since=start))
    if as_json or fmt is Format.JSON:
        emit_json(document)
    elif fmt is Format.CSV:
        _write_csv(document)
    else:
        _print_tables(document)


def _write_csv(document: dict[str, Any]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(("scope", "name", *_COLUMNS, "waived", "reason", "rejected"))
    for scope, key in (("policy", "policies"), ("service", "services")):
        for row in document[key]:
            writer.writerow(
                (
                    scope,
                    row[scope],
                    *(_blank(row[c]) for c in _COLUMNS),
                    _blank(row.get("waived")),
                    "",
                    "",
                )
            )
    for row in document["rejected_acks"]:
        writer.writerow(
            (
                "rejected",
                row["service"] or "",
                *("" for _ in _COLUMNS),
                "",
                row["reason"],
                row["count"],
            )
        )


def _blank(value: object) -> object:
    return "" if value is None else value


def _print_tables(document: dict[str, Any]) -> None:
    for scope, key in (("policy", "policies"), ("service", "services")):
        columns = (*_COLUMNS, "waived") if scope == "service" else _COLUMNS
        table = Table(scope, *columns, title=f"per {scope} since {document['since']}")
        for row in document[key]:
            table.add_row(row[scope], *("-" if row[c] is None else str(row[c]) for c in columns))
        out_console.print(table)
    if document["rejected_acks"]:
        table = Table("claimed service", "reason", "count", title="rejected acks")
        for row in document["rejected_acks"]:
            table.add_row(row["service"] or "?", row["reason"], str(row["count"]))
        out_console.print(table)
