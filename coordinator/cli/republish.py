"""`retention republish`: send existing events again, signed, from the coordinator's evidence."""

from __future__ import annotations

import asyncio
import uuid

import typer

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
from coordinator.operations.republish import (
    Outcome,
    RepublishSetup,
    Selection,
    UnknownSelection,
)
from coordinator.purge.holds import parse_entity
from coordinator.store.db import make_engine
from schemas.signing import SigningKeyError

__all__ = ["republish"]

EVENT_OPTION = typer.Option(None, "--event", help="One event id.")
RUN_OPTION = typer.Option(None, "--run", help="Every event of one run.")


def republish(
    event: uuid.UUID | None = EVENT_OPTION,
    entity: str | None = typer.Option(None, "--entity", help="Every event of TYPE:ID."),
    run: uuid.UUID | None = RUN_OPTION,
    service: str | None = typer.Option(
        None, "--service", help="Only events this service is an expected acknowledger of."
    ),
    by: str = BY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Send existing events again (same event ids, signed; audited). Held ones are skipped."""
    try:
        selection = Selection(
            event_id=event,
            entity=parse_entity(entity) if entity is not None else None,
            run_id=run,
            service=service,
        )
    except ValueError as exc:  # HoldError is one
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    settings = load_settings()
    try:
        setup = RepublishSetup(settings.kafka, settings.signatures.coordinator_signer())
    except SigningKeyError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None

    async def go() -> Outcome:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            async with setup.open(engine, SystemClock()) as republisher:
                return await republisher.republish(selection, actor=actor(by))
        finally:
            await engine.dispose()

    try:
        done = asyncio.run(go())
    except UnknownSelection as exc:
        err_console.print(str(exc))
        if as_json:
            emit_json(Outcome().as_dict())
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if as_json:
        emit_json(done.as_dict())
        return
    out_console.print(f"re-sent {done.sent_total} event(s)")
    if done.held_total:
        out_console.print(f"{done.held_total} event(s) under an active legal hold were not sent")
