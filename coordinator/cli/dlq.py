"""`retention dlq list` and `retention dlq redrive`: the dead-letter topic, by service."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import typer
from rich.markup import escape
from rich.table import Table

from coordinator.cli._app import (
    ExitCode,
    actor,
    emit_json,
    err_console,
    load_settings,
    out_console,
)
from coordinator.cli.services import BY_OPTION, JSON_OPTION
from coordinator.clock import SystemClock
from coordinator.operations.dlq import (
    Listing,
    Redriven,
    coordinator_keys,
    dead_letters,
    redrive,
    select_letters,
)
from coordinator.operations.republish import RepublishSetup
from coordinator.store.db import make_engine
from schemas.dlq import DlqReason
from schemas.signing import SigningKeyError

__all__ = ["app"]

app = typer.Typer(help="The dead-letter topic: list, re-drive.", no_args_is_help=True)

REASONS = ", ".join(r.value for r in DlqReason)
SERVICE_FILTER = typer.Option(None, "--service", help="Only this service's dead letters.")
REASON_FILTER = typer.Option(None, "--reason", help=f"Only this reason ({REASONS}).")
SINCE_OPTION = typer.Option(
    None, "--since", help="Only records written at or after this time (UTC if no offset)."
)
RECORDS_OPTION = typer.Option(False, "--records", help="List each record, not only counts.")
TIMEOUT_OPTION = typer.Option(
    60.0,
    "--timeout",
    help="Seconds to read the topic to its end (re-driving a chunk does not count).",
)
LIMIT_OPTION = typer.Option(
    1000,
    "--limit",
    min=1,
    help="Records listed at most (counts always cover the whole topic).",
)


def _failed(exc: LookupError | TimeoutError) -> typer.Exit:
    err_console.print(f"[red]{escape(str(exc))}[/red]")
    return typer.Exit(ExitCode.ERRORS)


@app.command("list")
def list_letters(
    service: str | None = SERVICE_FILTER,
    reason: str | None = REASON_FILTER,
    records: bool = RECORDS_OPTION,
    as_json: bool = JSON_OPTION,
    timeout_s: float = TIMEOUT_OPTION,
    limit: int = LIMIT_OPTION,
) -> None:
    """Dead letters per service and reason; each record with --service or --records."""
    settings = load_settings()
    listing = Listing(keep=limit)

    async def read() -> None:
        async with dead_letters(settings.kafka, timeout_s=timeout_s) as chunks:
            async for chunk in chunks:
                listing.add(select_letters(chunk, service=service, reason=reason))

    try:
        asyncio.run(read())
    except (LookupError, TimeoutError) as exc:
        raise _failed(exc) from None
    letters = sorted(listing.records, key=lambda d: (d.timestamp, d.partition, d.offset))
    if as_json:
        emit_json(
            {
                "records": [d.as_dict() for d in letters],
                "total": listing.total,
                "truncated": listing.truncated,
            }
        )
        return
    # A hundred services' dead letters stay readable: one line per service and reason.
    summary = Table("service", "reason", "records", "oldest", "newest")
    for (name, why), (n, oldest, newest) in sorted(listing.groups.items()):
        summary.add_row(
            escape(name) or "?", escape(why) or "?", str(n), _minute(oldest), _minute(newest)
        )
    out_console.print(summary)
    if service is None and not records:
        if letters:
            err_console.print("each record: --service NAME or --records")
        return
    table = Table("written", "service", "reason", "error", "tries", "event", "at")
    for d in letters:
        row = d.as_dict()
        table.add_row(
            _minute(d.timestamp),
            escape(row["service"]),
            escape(row["reason"]),
            escape(row["error"]),
            row["attempts"],
            escape(row["event_id"] or ""),
            f"{d.partition}:{d.offset}",
        )
    out_console.print(table)
    if listing.truncated:
        err_console.print(f"the first {len(letters)} of {listing.total} records (--limit)")


def _minute(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M")


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@app.command("redrive")
def redrive_letters(
    service: str = typer.Option(..., "--service", help="The service whose letters to re-drive."),
    since: datetime | None = SINCE_OPTION,
    reason: str | None = REASON_FILTER,
    by: str = BY_OPTION,
    as_json: bool = JSON_OPTION,
    timeout_s: float = TIMEOUT_OPTION,
    limit: int = LIMIT_OPTION,
) -> None:
    """Send the genuine coordinator events among a service's dead letters again (audited).

    Only records from the events topic with a valid coordinator signature, whose event the
    coordinator still keeps, are re-sent (from its evidence); the rest are listed as left.
    """
    settings = load_settings()
    try:
        signer = settings.signatures.coordinator_signer()
    except SigningKeyError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    verifier = coordinator_keys(settings.signatures, signer)
    if verifier is None:
        err_console.print(
            "[red]no coordinator key to check signatures with[/red] "
            "(RETENTION_SIGNING_KEY_FILE or RETENTION_COORDINATOR_PUBLIC_KEYS)"
        )
        raise typer.Exit(ExitCode.BAD_INPUT)
    start = _utc(since)
    clock = SystemClock()
    audit_data = {
        "service": service,
        "reason": reason,
        "since": None if start is None else start.isoformat(),
    }
    done = Redriven(keep=limit)
    selected = 0

    async def go() -> None:
        nonlocal selected
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            setup = RepublishSetup(settings.kafka, signer)
            async with (
                setup.open(engine, clock) as republisher,
                dead_letters(settings.kafka, timeout_s=timeout_s) as chunks,
            ):
                # One fetch at a time: a flooded DLQ is re-driven without holding it all.
                async for chunk in chunks:
                    letters = select_letters(chunk, service=service, reason=reason, since=start)
                    selected += len(letters)
                    await redrive(
                        letters,
                        engine=engine,
                        republisher=republisher,
                        verifier=verifier,
                        events_topic=settings.kafka.topics.events,
                        actor=actor(by),
                        audit_data=audit_data,
                        now=clock.now(),
                        done=done,
                    )
        finally:
            await engine.dispose()

    try:
        asyncio.run(go())
    except (LookupError, TimeoutError) as exc:
        raise _failed(exc) from None
    if as_json:
        emit_json({"selected": selected, **done.as_dict()})
        return
    out_console.print(
        f"{selected} dead letter(s) selected; re-sent {done.sent_total} event(s); "
        f"left {done.left_total}"
    )
    for (why, name), n in sorted(done.left_counts.items()):
        out_console.print(f"  left {n}: {why.value} (service {escape(name) or '?'})")
