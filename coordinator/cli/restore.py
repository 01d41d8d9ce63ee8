"""`retention restore`: put a run's deleted rows back from the vault (SPEC §12)."""

from __future__ import annotations

import asyncio
import uuid

import typer
from rich.markup import escape
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.cli._app import (
    ExitCode,
    actor,
    emit_json,
    err_console,
    load_settings,
    out_console,
    with_keystore,
)
from coordinator.clock import SystemClock
from coordinator.copies.crypto.keystore import KeyStore, KeyStoreError
from coordinator.copies.vault.restore import RestoreError, RestoreReport, restore_run
from coordinator.purge.holds import HoldError, parse_entity
from coordinator.purge.planner import time_base

__all__ = ["normalised_id", "restore"]


def normalised_id(entity_id: str) -> str:
    """The id as the vault records it (`str()` of the row's id): `042` → `42`, a UUID in
    its canonical lower-case form, anything else as written."""
    text = entity_id.strip()
    if text.isascii() and text.lstrip("-").isdigit():
        return str(int(text))
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return entity_id


def restore(
    run: str = typer.Option(..., "--run", help="The run whose deletions to undo."),
    entity: str | None = typer.Option(
        None,
        "--entity",
        help="type:id: only this entity's rows (a policy's entity), or a subject's (user:7).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Do every batch and roll it back: shows what would happen."
    ),
    by: str | None = typer.Option(
        None, "--by", help="Who restores (recorded with the OS user); required unless --dry-run."
    ),
    batch_size: int = typer.Option(
        1000, "--batch-size", min=1, max=50_000, help="Vault rows per transaction."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Re-insert the rows a run deleted under a `restore_window` policy, within the window.

    Conflicts with existing unique keys are reported and left alone. Restored entities get
    the hold `restore-<run id>`: release it once the policy is fixed. Downstream services
    are not asked to restore anything (docs/restore.md).
    """
    try:
        run_id = uuid.UUID(run)
    except ValueError:
        err_console.print(f"[red]bad run id {escape(run)!r}[/red]: expected a UUID")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    chosen: tuple[str, str] | None = None
    if entity is not None:
        try:
            entity_type, entity_id = parse_entity(entity)
        except HoldError as exc:
            err_console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(ExitCode.BAD_INPUT) from None
        chosen = (entity_type, normalised_id(entity_id))
    if by is None and not dry_run:
        err_console.print("[red]--by is required[/red] (who restores), unless --dry-run")
        raise typer.Exit(ExitCode.BAD_INPUT)
    settings = load_settings()

    async def go(engine: AsyncEngine, keys: KeyStore) -> RestoreReport:
        async with engine.connect() as conn:
            now = (await time_base(conn, SystemClock())).now
        return await restore_run(
            engine,
            keys,
            run_id,
            entity=chosen,
            dry_run=dry_run,
            by=actor(by or "dry-run"),
            now=now,
            batch_size=batch_size,
        )

    try:
        report = asyncio.run(with_keystore(settings, go, pool_size=2))
    except (RestoreError, KeyStoreError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        _print(report)
    if report.error is not None:
        raise typer.Exit(ExitCode.ERRORS)


def _print(report: RestoreReport) -> None:
    verb = "would be restored" if report.dry_run else "restored"
    out_console.print(f"run {report.run_id}: {len(report.restored)} entities {verb}")
    if report.restored and not report.dry_run:
        out_console.print(f"  held by [bold]{report.hold_id}[/bold]: release it after the fix")
    for label, entities in (
        ("conflict (unique key taken again; left in the vault)", report.conflicts),
        ("crypto-shredded (erasure request)", report.shredded),
    ):
        for item in entities:
            out_console.print(f"  {escape(item)}: {label}", highlight=False)
    if report.expired:
        out_console.print(f"  {report.expired} rows past their restoration window")
    if report.already_restored:
        out_console.print(f"  {report.already_restored} rows restored before")
    if report.error is not None:
        err_console.print(f"[red]a batch failed and rolled back: {report.error}[/red]")
