"""`retention notifications`: where each webhook delivery stands."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.cli._app import emit_json, load_settings, out_console, read_database
from coordinator.operations.notify.delivery import list_notifications

__all__ = ["app"]

app = typer.Typer(help="Webhook notifications and their delivery.", no_args_is_help=True)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DROPPED = "dropped"


@app.command("list")
def list_(
    status: Annotated[
        DeliveryStatus | None, typer.Option("--status", help="Only deliveries in this state.")
    ] = None,
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="Most rows, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Deliveries newest first: webhook, kind, key, status, attempts, last error, next try."""

    async def query(conn: AsyncConnection) -> list[dict[str, Any]]:
        return await list_notifications(
            conn, status=status.value if status is not None else None, limit=limit
        )

    rows = read_database(load_settings(), query)
    if as_json:
        emit_json({"notifications": rows})
        return
    table = Table(
        "id", "webhook", "kind", "key", "status", "attempts", "last error", "next try", title=None
    )
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["webhook"],
            row["kind"],
            row["key"],
            row["status"],
            str(row["attempts"]),
            row["last_error"] or "-",
            row["next_attempt_at"] or "-",
        )
    out_console.print(table)
