"""`retention holds`: legal holds over entities (`type:id`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.cli._app import (
    ExitCode,
    actor,
    emit_json,
    err_console,
    load_settings,
    out_console,
    write_database,
)
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.clock import SystemClock
from coordinator.purge import holds
from coordinator.purge.hold_ids import HoldIdReport, normalise_hold_ids
from coordinator.settings import Settings

__all__ = ["app", "create", "list_", "normalise", "print_normalisation", "release", "show"]

app = typer.Typer(help="Legal holds: entities no policy may touch.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="One JSON document on stdout.")
ENTITIES_ARGUMENT = typer.Argument(None, help="Entities as TYPE:ID.")
FROM_FILE_OPTION = typer.Option(None, "--from-file", help="One TYPE:ID per line.")
T = TypeVar("T")


def _in_transaction(
    work: Callable[[AsyncConnection], Awaitable[T]], settings: Settings | None = None
) -> T:
    try:
        return write_database(settings or load_settings(), work)
    except holds.HoldError as exc:
        err_console.print(f"[red]{exc}[/red]", markup=False, highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None


def _parse_expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        err_console.print(f"[red]--expires {text!r} is not an ISO 8601 date-time[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if value.tzinfo is None:
        err_console.print(f"[red]--expires {text!r} needs a timezone, e.g. {text}Z[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    return value


def _read_entities(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        err_console.print(f"[red]cannot read --from-file:[/red] {exc}")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _show(hold: holds.Hold, now: datetime) -> None:
    out_console.print(f"[bold]{hold.id}[/bold] ({hold.status(now)})")
    for key, value in hold.as_dict(now).items():
        if key not in ("id", "entities"):
            out_console.print(f"  {key}: {value}", markup=False, highlight=False)
    for entity_type, entity_id in hold.entities:
        out_console.print(f"  - {entity_type}:{entity_id}", markup=False, highlight=False)


@app.command("create")
def create(
    entities: list[str] | None = ENTITIES_ARGUMENT,
    reason: str = typer.Option(..., "--reason", help="Why (case, request, regulator)."),
    by: str = typer.Option(..., "--by", help="Who asked for the hold (recorded with the OS user)."),
    expires: str | None = typer.Option(None, "--expires", help="ISO 8601 date-time with zone."),
    hold_id: str | None = typer.Option(None, "--id", help="Hold id (default: generated)."),
    from_file: Path | None = FROM_FILE_OPTION,
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Hold entities: from the moment this returns, no purge batch touches them.

    Each TYPE must be an entity type of the policy file, and each ID a value its id
    column can hold (stored in the column's text form: `order:042` holds order 42).
    """
    wanted = list(entities or []) + (_read_entities(from_file) if from_file else [])
    expires_at = _parse_expiry(expires)
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    now = SystemClock().now()

    async def create(conn: AsyncConnection) -> holds.Hold:
        return await holds.create_hold(
            conn,
            entities=wanted,
            types=await holds.entity_types(conn, policy_set),
            reason=reason,
            created_by=actor(by),
            now=now,
            expires_at=expires_at,
            hold_id=hold_id,
        )

    hold = _in_transaction(create, settings)
    if as_json:
        emit_json(hold.as_dict(now))
    else:
        out_console.print(f"hold [bold]{hold.id}[/bold] created over {hold.entity_count} entities")


@app.command("list")
def list_(
    include_inactive: bool = typer.Option(False, "--all", help="Also released and expired."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Active holds (all with --all)."""
    now = SystemClock().now()
    found = _in_transaction(
        lambda conn: holds.list_holds(conn, now=now, include_inactive=include_inactive)
    )
    if as_json:
        emit_json({"holds": [hold.as_dict(now) for hold in found]})
        return
    table = Table(title="legal holds")
    for column in ("id", "status", "entities", "created by", "created at", "expires", "reason"):
        table.add_column(column)
    for hold in found:
        row: list[Any] = [
            hold.id,
            hold.status(now),
            str(hold.entity_count),
            hold.created_by,
            hold.created_at.isoformat(timespec="seconds"),
            hold.expires_at.isoformat(timespec="seconds") if hold.expires_at else "never",
            hold.reason,
        ]
        table.add_row(*row)
    out_console.print(table)


@app.command("show")
def show(hold_id: str = typer.Argument(..., help="Hold id."), as_json: bool = JSON_OPTION) -> None:
    """One hold with every entity it covers."""
    now = SystemClock().now()
    hold = _in_transaction(lambda conn: holds.get_hold(conn, hold_id))
    if as_json:
        emit_json(hold.as_dict(now))
    else:
        _show(hold, now)


@app.command("release")
def release(
    hold_id: str = typer.Argument(..., help="Hold id."),
    by: str = typer.Option(..., "--by", help="Who released it (recorded with the OS user)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Release a hold; its entities become purgeable at the next run."""
    now = SystemClock().now()
    hold = _in_transaction(lambda conn: holds.release_hold(conn, hold_id, by=actor(by), now=now))
    if as_json:
        emit_json(hold.as_dict(now))
    else:
        out_console.print(f"hold [bold]{hold.id}[/bold] released by {by}")


def print_normalisation(report: HoldIdReport, *, dry_run: bool) -> None:
    """One line per change and per entity left as stored, on stderr."""
    verb = "would become" if dry_run else "now"
    for change in report.rewritten:
        forms = ", ".join(f"{change.entity_type}:{i}" for i in change.normalised)
        err_console.print(
            f"hold {change.hold_id}: {change.entity_type}:{change.stored} {verb} {forms}",
            markup=False,
            highlight=False,
        )
    for change in report.duplicates:
        err_console.print(
            f"hold {change.hold_id}: {change.entity_type}:{change.stored} "
            f"{'would be' if dry_run else 'was'} removed: it duplicates "
            + ", ".join(f"{change.entity_type}:{i}" for i in change.normalised),
            markup=False,
            highlight=False,
        )
    for change, why in [(c, "no policy has this entity type") for c in report.unknown_types] + [
        (c, "no table of this type can hold this id") for c in report.unparsable
    ]:
        err_console.print(
            f"hold {change.hold_id}: {change.entity_type}:{change.stored} protects nothing "
            f"({why}): release the hold or create one that names the entity",
            markup=False,
            highlight=False,
        )
    if not report.changed and report.ok:
        err_console.print("every hold's ids are already in normal form")


@app.command("normalise")
def normalise(
    by: str = typer.Option(..., "--by", help="Who runs it (recorded with the OS user)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would change only."),
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Bring holds stored before ids were normalised into normal form (`order:042` →
    `order:42`); exit 1 while a hold names an unknown type or an impossible id."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)

    async def work(conn: AsyncConnection) -> HoldIdReport:
        return await normalise_hold_ids(
            conn,
            await holds.entity_types(conn, policy_set),
            actor=actor(by),
            now=SystemClock().now(),
            dry_run=dry_run,
        )

    report = _in_transaction(work, settings)
    if as_json:
        emit_json({**report.as_dict(), "dry_run": dry_run})
    else:
        print_normalisation(report, dry_run=dry_run)
    if not report.ok:
        raise typer.Exit(ExitCode.ERRORS)
