"""`retention db`: the coordinator's schema and its own retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import typer

from coordinator.cli._app import actor, emit_json, err_console, load_settings
from coordinator.cli.holds import print_normalisation
from coordinator.clock import SystemClock
from coordinator.outbox.prune import Pruned, prune_outbox
from coordinator.policy.model import PolicyFileError, load_policies
from coordinator.purge.hold_ids import HoldIdReport, normalise_hold_ids
from coordinator.purge.holds import entity_types
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade

__all__ = ["app", "db_prune", "db_upgrade"]

app = typer.Typer(help="Database schema and the system's own retention.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target alembic revision.")) -> None:
    """Create or migrate every table the coordinator owns; then, with a policy file
    (RETENTION_POLICIES), bring holds stored before id normalisation into normal form."""
    settings = load_settings()
    asyncio.run(upgrade(settings.database_url.get_secret_value(), revision))
    err_console.print(f"database at revision {revision}")
    if revision == "head":
        _normalise_holds(settings)


def _normalise_holds(settings: Settings) -> None:
    """The data step of the upgrade that needs the policies (coordinator/purge/hold_ids.py);
    without a usable policy file it says how to run it later, and the upgrade still succeeds."""
    later = "run `retention holds normalise --by WHO` with the policy file"
    if settings.policies is None:
        err_console.print(f"holds: RETENTION_POLICIES is not set; {later}")
        return
    try:
        policy_set = load_policies(settings.policies, hook_modules=settings.allowed_hook_modules())
    except PolicyFileError:
        err_console.print(f"holds: the policy file does not load (`policies validate`); {later}")
        return

    async def run() -> HoldIdReport:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            async with engine.begin() as conn:
                return await normalise_hold_ids(
                    conn,
                    await entity_types(conn, policy_set),
                    actor=actor("db upgrade"),
                    now=SystemClock().now(),
                )
        finally:
            await engine.dispose()

    print_normalisation(asyncio.run(run()), dry_run=False)


@app.command("prune")
def db_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Delete the coordinator's own rows past their retention (SPEC §13).

    Now: the outbox rows of events completed more than RETENTION_OUTBOX_RETENTION_DAYS
    (30) ago. Evidence of an event that is not completed is never removed.
    """
    settings = load_settings()

    async def run() -> Pruned:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            return await prune_outbox(
                engine,
                now=SystemClock().now(),
                keep=timedelta(days=settings.outbox_retention_days),
                dry_run=dry_run,
            )
        finally:
            await engine.dispose()

    pruned = asyncio.run(run())
    if as_json:
        emit_json([pruned.as_dict()])
        return
    verb = "would be deleted" if dry_run else "deleted"
    err_console.print(
        f"{pruned.table}: {pruned.rows} rows of events completed before "
        f"{pruned.cutoff.isoformat()} {verb}"
    )
