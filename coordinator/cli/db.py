"""`retention db`: the coordinator's schema and its own retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import typer

from coordinator.cli._app import emit_json, err_console, load_settings
from coordinator.clock import SystemClock
from coordinator.outbox.prune import Pruned, prune_outbox
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade
from coordinator.vault.prune import prune_vault

__all__ = ["app", "db_prune", "db_upgrade"]

app = typer.Typer(help="Database schema and the system's own retention.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target alembic revision.")) -> None:
    """Create or migrate every table the coordinator owns."""
    settings = load_settings()
    asyncio.run(upgrade(settings.database_url.get_secret_value(), revision))
    err_console.print(f"database at revision {revision}")


@app.command("prune")
def db_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Delete the coordinator's own rows past their retention (SPEC §13).

    Now: the outbox rows of events completed more than RETENTION_OUTBOX_RETENTION_DAYS
    (30) ago, and the vault rows whose restoration window has ended. Evidence of an
    event that is not completed is never removed.
    """
    settings = load_settings()

    async def run() -> list[Pruned]:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            now = SystemClock().now()
            return [
                await prune_outbox(
                    engine,
                    now=now,
                    keep=timedelta(days=settings.outbox_retention_days),
                    dry_run=dry_run,
                ),
                await prune_vault(engine, now=now, dry_run=dry_run),
            ]
        finally:
            await engine.dispose()

    pruned = asyncio.run(run())
    if as_json:
        emit_json([p.as_dict() for p in pruned])
        return
    verb = "would be deleted" if dry_run else "deleted"
    outbox, vaulted = pruned
    err_console.print(
        f"{outbox.table}: {outbox.rows} rows of events completed before "
        f"{outbox.cutoff.isoformat()} {verb}"
    )
    err_console.print(
        f"{vaulted.table}: {vaulted.rows} rows whose restoration window ended by "
        f"{vaulted.cutoff.isoformat()} {verb}"
    )
