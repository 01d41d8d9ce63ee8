"""`retention services` and `retention acks`: declared services, drift, retire and waive."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import typer
import yaml
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.cli._app import (
    ExitCode,
    actor,
    emit_json,
    err_console,
    load_settings,
    out_console,
    read_database,
    write_database,
)
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.clock import SystemClock
from coordinator.operations import backfill as backfills
from coordinator.operations.republish import RepublishSetup
from coordinator.policy.durations import parse_duration
from coordinator.store.db import make_engine
from coordinator.store.tables import service_registry
from coordinator.tracking import drift, waivers

__all__ = ["BY_OPTION", "JSON_OPTION", "acks_app", "app"]

app = typer.Typer(help="Declared services: drift, suggest, retire, backfill.", no_args_is_help=True)
acks_app = typer.Typer(help="Acknowledgements: waive one.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="One JSON document on stdout.")
REASON_OPTION = typer.Option(..., "--reason", help="Why (recorded in the audit log).")
BY_OPTION = typer.Option(..., "--by", help="Who decided (recorded with the OS user).")
EVENT_OPTION = typer.Option(..., "--event", help="Event id.")
SERVICE_OPTION = typer.Option(..., "--service", help="The service whose ack is waived.")
T = TypeVar("T")


def _write(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    return write_database(load_settings(), work)


@app.command("list")
def list_services(
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Declared vs registered services, and which drift."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    found = read_database(settings, lambda c: drift.service_drift(c, policy_set.services))
    if as_json:
        emit_json({"services": [d.as_dict() for d in found.values()]})
        return
    table = Table("service", "declared", "registered", "drift", "last seen", "sdk")
    for d in found.values():
        row = d.as_dict()
        table.add_row(
            d.service,
            _handles(row["declared"]) if row["declared"] is not None else "-",
            _handles(row["registered"]) or "-",
            d.problem or "",
            str(d.last_seen or "never"),
            d.sdk_version or "",
        )
    out_console.print(table)


def _handles(handles: dict[str, list[str]]) -> str:
    return "; ".join(f"{e}: {', '.join(a)}" for e, a in handles.items())


@app.command("suggest")
def suggest() -> None:
    """Print a `services:` block from today's registrations (fill in owner and keys)."""
    settings = load_settings()

    async def query(conn: AsyncConnection) -> dict[str, dict[str, list[str]]]:
        r = service_registry.c
        found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        rows = await conn.execute(
            select(r.service, r.entity_type, r.action)
            .where(r.retired_at.is_(None))
            .order_by(r.service, r.entity_type, r.action)
        )
        for row in rows:
            found[row.service][row.entity_type].append(row.action)
        return {name: dict(handles) for name, handles in found.items()}

    registered = read_database(settings, query)
    if not registered:
        err_console.print("no current registrations: nothing to suggest")
        raise typer.Exit(ExitCode.ERRORS)
    block = {
        "services": [
            {
                "name": name,
                "owner": "TODO: team or address that answers for this service",
                "handles": handles,
                "public_key_files": [f"keys/{name}.pub"],
            }
            for name, handles in registered.items()
        ]
    }
    typer.echo(
        "# From current registrations (a signal, not a review): check each `handles`,\n"
        "# set `owner`, and generate keys with `retention keys generate --name <service>`.\n"
        + yaml.safe_dump(block, sort_keys=False, default_flow_style=None),
        nl=False,
    )


@app.command("retire")
def retire(
    name: str = typer.Argument(..., help="The service."),
    reason: str = REASON_OPTION,
    by: str = BY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Waive every open acknowledgement of a service (audited)."""
    done = _write(
        lambda c: waivers.retire_service(
            c, service=name, reason=reason, actor=actor(by), now=SystemClock().now()
        )
    )
    _report(done, as_json=as_json)


@acks_app.command("waive")
def waive(
    event: uuid.UUID = EVENT_OPTION,
    service: str = SERVICE_OPTION,
    reason: str = REASON_OPTION,
    by: str = BY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Waive one service's open acknowledgement of one event (audited)."""
    done = _write(
        lambda c: waivers.waive_ack(
            c,
            event_id=event,
            service=service,
            reason=reason,
            actor=actor(by),
            now=SystemClock().now(),
        )
    )
    if not done.events:
        err_console.print(f"no open acknowledgement of {event} by {service!r}")
        if as_json:
            emit_json({"waived": [], "completed": []})
        raise typer.Exit(ExitCode.BAD_INPUT)
    _report(done, as_json=as_json)


def _report(done: waivers.Waived, *, as_json: bool) -> None:
    if as_json:
        emit_json({"waived": done.events, "completed": done.completed})
        return
    out_console.print(
        f"waived {len(done.events)} acknowledgement(s); {len(done.completed)} event(s) completed"
    )


SINCE_OPTION = typer.Option(
    ..., "--since", help="Events initiated at or after this date (UTC unless it has an offset)."
)
ENTITY_TYPE_OPTION = typer.Option(None, "--entity-type", help="Only events of this entity type.")
WINDOW_OPTION = typer.Option(
    "14d", "--window", help="The service's time to answer: deadlines are at least now + this."
)


@app.command("backfill")
def backfill(
    name: str = typer.Argument(..., help="A service declared in the policy file."),
    since: datetime = SINCE_OPTION,
    entity_type: str | None = ENTITY_TYPE_OPTION,
    window: str = WINDOW_OPTION,
    by: str = BY_OPTION,
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make a newly declared service an expected acknowledger of past events, and send them.

    Covers the events since --since, still in the coordinator's evidence, whose entity type
    and action its declaration handles. Audited; completion and certificates then include it.
    """
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    declared = {s.name: s for s in policy_set.services}.get(name)
    if declared is None:
        err_console.print(f"[red]{name!r} is not declared in the policy file[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    if entity_type is not None and entity_type not in declared.handles:
        err_console.print(
            f"[red]{name} does not handle {entity_type!r}[/red] "
            f"(it handles: {', '.join(sorted(declared.handles))})"
        )
        raise typer.Exit(ExitCode.BAD_INPUT)
    try:
        answer_within = parse_duration(window)
        signer = settings.signatures.coordinator_signer()
    except ValueError as exc:  # SigningKeyError is one
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    start = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    clock = SystemClock()

    def shown(so_far: backfills.Backfilled) -> None:
        err_console.print(
            f"backfill {name}: {so_far.covered} covered, {so_far.added_total} added, "
            f"{so_far.sent_total} sent",
            highlight=False,
        )

    async def go() -> backfills.Backfilled:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            setup = RepublishSetup(settings.kafka, signer)
            async with setup.open(engine, clock) as republisher:
                return await backfills.backfill(
                    engine,
                    republisher,
                    declared,
                    since=start,
                    entity_type=entity_type,
                    actor=actor(by),
                    clock=clock,
                    window=answer_within,
                    reminder_interval=timedelta(seconds=settings.tracker.reminder_interval_s),
                    progress=shown,
                )
        finally:
            await engine.dispose()

    done = asyncio.run(go())
    if as_json:
        emit_json(done.as_dict())
        return
    out_console.print(
        f"{name}: expected for {done.added_total} more event(s) "
        f"({done.reopened_total} reopened), {done.sent_total} sent"
        + (f", {done.held_total} held (not sent)" if done.held_total else "")
    )
