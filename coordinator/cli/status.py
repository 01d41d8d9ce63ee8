"""`retention status` and `retention certificate`: where one entity's erasure stands."""

from __future__ import annotations

import uuid
from typing import Any

import typer
from rich.markup import escape
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
from coordinator.copies.verification.queries import entity_verifications
from coordinator.evidence.pseudonyms import load_pepper
from coordinator.policy.model import PolicyFileError, PolicySet, load_policies
from coordinator.purge.holds import HoldError
from coordinator.settings import Settings
from coordinator.tracking import queries
from coordinator.tracking.entity import entity_certificate, entity_events

__all__ = ["certificate", "parse_entity", "status"]

_STYLE = {
    "completed": "green",
    "not_found": "green",
    "pending": "yellow",
    "published": "yellow",
    "unpublished": "yellow",
    "failed": "red",
    "overdue": "red",
    "waived": "magenta",
    "resurrected": "red",
    "still_present": "red",
    "verified": "green",
    "unsupported": "yellow",
    "incomplete": "yellow",
    "held": "cyan",
}


def parse_entity(text: str) -> tuple[str, str]:
    """`type:id` → (type, id); exits 2 naming the problem otherwise."""
    entity_type, sep, entity_id = text.partition(":")
    if not sep or not entity_type or not entity_id:
        err_console.print(f"[red]bad entity {text!r}[/red]: expected ENTITY_TYPE:ID, e.g. user:42")
        raise typer.Exit(ExitCode.BAD_INPUT)
    return entity_type, entity_id


def status(
    entity: str | None = typer.Argument(
        None, metavar="[ENTITY_TYPE:ID]", help="The entity, e.g. user:42."
    ),
    event: str | None = typer.Option(None, "--event", help="One event, by its event_id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Each retention event of an entity (or one event): every expected service's answer."""
    if (entity is None) == (event is None):
        err_console.print("[red]give either ENTITY_TYPE:ID or --event ID[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    settings = load_settings()
    if event is not None:
        try:
            event_id = uuid.UUID(event)
        except ValueError:
            err_console.print(f"[red]bad event id {event!r}[/red]: expected a UUID")
            raise typer.Exit(ExitCode.BAD_INPUT) from None
        found = read_database(
            settings, lambda conn: queries.event_status_of(conn, event_id, now=SystemClock().now())
        )
        if found is None:
            err_console.print(f"no retention event {event_id}")
            raise typer.Exit(ExitCode.ERRORS)
        if as_json:
            emit_json(found)
        else:
            _print_event(found)
        return

    assert entity is not None
    entity_type, entity_id = parse_entity(entity)
    # With a policy file the id is normalised as a hold's is (`order:042` finds order 42).
    policy_set = _policies_if_set(settings)
    pepper = load_pepper(settings.suppression_pepper_file)

    async def both(conn: AsyncConnection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        now = SystemClock().now()
        return (
            await entity_events(conn, policy_set, entity_type, entity_id, now=now, pepper=pepper),
            await entity_verifications(conn, entity_type, entity_id, pepper=pepper),
        )

    try:
        events, verified = read_database(settings, both)
    except HoldError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if not events:
        err_console.print(f"no retention event or purge for {entity_type}:{entity_id}")
        raise typer.Exit(ExitCode.ERRORS)
    if as_json:
        emit_json(
            {
                "entity": {"type": entity_type, "id": entity_id},
                "events": events,
                "verifications": verified,
            }
        )
        return
    for found in events:
        _print_event(found)
    for found in verified:
        _print_verification(found)


def _print_verification(found: dict[str, Any]) -> None:
    outcome = found["outcome"]
    style = _STYLE.get(outcome, "white")
    out_console.print(
        f"[bold]verify[/bold] {found['trigger']} by {escape(found['requested_by'])} at "
        f"{found['requested_at']} — [{style}]{outcome}[/{style}]",
        highlight=False,
    )
    table = Table("service", "answer", "records left", "answered at", "detail")
    for svc in found["services"]:
        answer = svc["status"]
        table.add_row(
            svc["service"],
            f"[{_STYLE.get(answer, 'white')}]{answer}[/{_STYLE.get(answer, 'white')}]",
            "-" if svc["records_affected"] is None else str(svc["records_affected"]),
            svc["acknowledged_at"] or "-",
            escape(svc["detail"]),
        )
    out_console.print(table)


def _policies_if_set(settings: Settings) -> PolicySet | None:
    """The policy file of RETENTION_POLICIES, if set and loadable; status reads without one."""
    if settings.policies is None:
        return None
    try:
        return load_policies(settings.policies, hook_modules=settings.allowed_hook_modules())
    except PolicyFileError:
        err_console.print(
            "[yellow]the policy file does not load: ids are taken as written[/yellow]"
        )
        return None


def certificate(
    entity: str = typer.Argument(..., metavar="ENTITY_TYPE:ID", help="The entity, e.g. user:42."),
) -> None:
    """A JSON deletion certificate for one entity, backed by audit-chain hashes.

    Exits 1 when the entity is unknown or not every expected service has completed."""
    entity_type, entity_id = parse_entity(entity)
    settings = load_settings()
    policy_set = _policies_if_set(settings)
    pepper = load_pepper(settings.suppression_pepper_file)

    try:
        # The id as a hold stores it (`order:042` is order 42), with a policy file.
        document = read_database(
            settings,
            lambda conn: entity_certificate(
                conn,
                policy_set,
                entity_type,
                entity_id,
                now=SystemClock().now(),
                pepper=pepper,
                backups=BackupHorizon.of(settings),
            ),
        )
    except HoldError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if document is None:
        err_console.print(f"no retention event or purge for {entity_type}:{entity_id}")
        raise typer.Exit(ExitCode.ERRORS)
    emit_json(document)
    if not document["complete"]:
        err_console.print(
            f"[yellow]{entity_type}:{entity_id} is not erased everywhere yet[/yellow]"
        )
        raise typer.Exit(ExitCode.ERRORS)


def _print_event(event: dict[str, Any]) -> None:
    state = event["state"]
    out_console.print(
        f"[bold]{event['entity_type']}:{event['entity_id']}[/bold] {event['action']} by "
        f"policy [bold]{event['policy']}[/bold] — [{_STYLE.get(state, 'white')}]{state}"
        f"[/{_STYLE.get(state, 'white')}]"
    )
    out_console.print(
        f"  event {event['event_id']} · purged {event['purged_at'] or '-'} · "
        f"published {event['published_at'] or '-'} · deadline {event['deadline'] or '-'} · "
        f"reminders {event['reminders_sent']} · rejected acks {event['rejected_acks']}"
    )
    table = Table("service", "status", "acknowledged", "records", "attempt", "acks", "detail")
    for svc in event["services"]:
        style = _STYLE.get(svc["status"], "white")
        table.add_row(
            svc["service"],
            f"[{style}]{svc['status']}[/{style}]",
            svc["acknowledged_at"] or "-",
            "-" if svc["records_affected"] is None else str(svc["records_affected"]),
            "-" if svc["attempt"] is None else str(svc["attempt"]),
            str(svc["acks_received"]),
            f"{svc['detail']} (waived by {svc['waived_by']})"
            if svc["status"] == "waived"
            else svc["detail"],
        )
    if event["services"]:
        out_console.print(table)
    for rejected in event["rejected"]:
        out_console.print(
            f"  [red]rejected[/red] ack claiming {escape(rejected['service'] or '?')} "
            f"({escape(rejected['status'] or '?')}): {rejected['reason']} "
            f"at {rejected['received_at']}",
            markup=True,
            highlight=False,
        )
    else:
        out_console.print("  no downstream service is expected to acknowledge this event")
