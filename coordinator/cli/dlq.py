"""`retention dlq list` and `retention dlq redrive`: the dead-letter topic, by service."""

from __future__ import annotations

import asyncio
from collections import Counter
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
    DeadLetter,
    Redriven,
    coordinator_keys,
    read_dead_letters,
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
TIMEOUT_OPTION = typer.Option(60.0, "--timeout", help="Seconds to read the topic to its end.")


def _read(timeout_s: float) -> list[DeadLetter]:
    settings = load_settings()
    try:
        return asyncio.run(read_dead_letters(settings.kafka, timeout_s=timeout_s))
    except (LookupError, TimeoutError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(ExitCode.ERRORS) from None


@app.command("list")
def list_letters(
    service: str | None = SERVICE_FILTER,
    reason: str | None = REASON_FILTER,
    records: bool = RECORDS_OPTION,
    as_json: bool = JSON_OPTION,
    timeout_s: float = TIMEOUT_OPTION,
) -> None:
    """Dead letters per service and reason; each record with --service or --records."""
    letters = select_letters(_read(timeout_s), service=service, reason=reason)
    if as_json:
        emit_json({"records": [d.as_dict() for d in letters]})
        return
    # A hundred services' dead letters stay readable: one line per service and reason.
    summary = Table("service", "reason", "records", "oldest", "newest")
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    for d in letters:
        groups.setdefault((d.service, d.reason), []).append(d)
    for (name, why), found in sorted(groups.items()):
        summary.add_row(
            escape(name) or "?",
            escape(why) or "?",
            str(len(found)),
            _minute(min(d.timestamp for d in found)),
            _minute(max(d.timestamp for d in found)),
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
    letters = select_letters(_read(timeout_s), service=service, reason=reason, since=start)
    clock = SystemClock()
    audit_data = {
        "service": service,
        "reason": reason,
        "since": None if start is None else start.isoformat(),
    }

    async def go() -> Redriven:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            setup = RepublishSetup(settings.kafka, signer)
            async with setup.open(engine, clock) as republisher:
                return await redrive(
                    letters,
                    engine=engine,
                    republisher=republisher,
                    verifier=verifier,
                    events_topic=settings.kafka.topics.events,
                    actor=actor(by),
                    audit_data=audit_data,
                    now=clock.now(),
                )
        finally:
            await engine.dispose()

    done = asyncio.run(go())
    if as_json:
        emit_json({"selected": len(letters), **done.as_dict()})
        return
    out_console.print(
        f"{len(letters)} dead letter(s) selected; re-sent {len(done.sent)} event(s); "
        f"left {len(done.left)}"
    )
    for (why, name), n in sorted(Counter((w.value, d.service) for d, w in done.left).items()):
        out_console.print(f"  left {n}: {why} (service {escape(name) or '?'})")
