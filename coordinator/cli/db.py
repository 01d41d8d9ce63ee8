"""`retention db`: the coordinator's schema and its own retention."""

from __future__ import annotations

import asyncio

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.cli._app import actor, emit_json, err_console, load_settings
from coordinator.cli.holds import print_normalisation
from coordinator.clock import SystemClock
from coordinator.evidence import evidence_signer
from coordinator.evidence.partitions import LAYOUTS, LEDGER, UncopiedColumns, convert
from coordinator.evidence.prune import prune_own_data, repair_pseudonyms
from coordinator.evidence.pseudonyms import load_pepper
from coordinator.outbox.prune import Pruned
from coordinator.policy.model import PolicyFileError, load_policies
from coordinator.purge.hold_ids import HoldIdReport, normalise_hold_ids
from coordinator.purge.holds import entity_types
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from coordinator.store.migrate import upgrade

__all__ = ["app", "db_partition", "db_prune", "db_upgrade"]

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
    """Prune the coordinator's own tables past their retention (SPEC §13).

    The outbox (RETENTION_OUTBOX_RETENTION_DAYS, 30), entity ids in old evidence turned
    into HMACs (same age; needs RETENTION_SUPPRESSION_PEPPER_FILE), the ack ledger, event
    status and audit log (RETENTION_*_RETENTION_DAYS, 6 years), and the vault rows whose
    restoration window has ended. Evidence of an event that is not completed is never
    removed. `serve` runs this daily.
    """
    settings = load_settings()

    async def run() -> list[Pruned]:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            return await prune_own_data(
                engine,
                settings.own_retention(),
                now=SystemClock().now(),
                dry_run=dry_run,
                pepper=load_pepper(settings.suppression_pepper_file),
                # A dry run signs nothing: it needs no key.
                signer=None if dry_run else evidence_signer(settings.signatures),
            )
        finally:
            await engine.dispose()

    results = asyncio.run(run())
    if as_json:
        emit_json([pruned.as_dict() for pruned in results])
        return
    for pruned in results:
        verb = "would go" if pruned.dry_run else "gone"
        err_console.print(
            f"{pruned.table}: {pruned.rows} rows {verb} (cutoff {pruned.cutoff.isoformat()})"
        )
        for name in pruned.partitions:
            err_console.print(f"  partition {name} {'would be ' if pruned.dry_run else ''}dropped")


TABLES_ARGUMENT = typer.Argument(
    None, help="Tables to convert (default: " + ", ".join(LAYOUTS) + ")."
)


@app.command("partition")
def db_partition(
    tables: list[str] = TABLES_ARGUMENT,
    batch: int = typer.Option(10_000, min=1, help="Rows copied per transaction."),
) -> None:
    """Convert existing tables into their monthly partitioned form, while serve runs.

    Copies each table in key order, one transaction per batch (resumable: run it again
    after an interruption), then swaps the tables under a moment's lock. The old table
    stays as `<table>_unpartitioned`; drop it once you have checked the new one (for the
    audit log: `retention audit verify --full` passes). Pruning goes on meanwhile, but
    leaves an audit log alone until its conversion has swapped.

    Once the ack ledger is partitioned, it also rewrites as HMACs the entity ids of
    pseudonymised events that a version before session 12 left in clear while the
    ledger converted (needs RETENTION_SUPPRESSION_PEPPER_FILE; without it, exit 1 if
    there are any).
    """
    settings = load_settings()
    chosen = list(tables or LAYOUTS)
    unknown = sorted(set(chosen) - set(LAYOUTS))
    if unknown:
        err_console.print(f"not a partitioned table: {', '.join(unknown)}")
        raise typer.Exit(2)

    async def run() -> bool:
        """Convert; whether ids are left in clear for want of the pepper."""
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        left = False
        try:
            for name in chosen:
                done = await convert(engine, LAYOUTS[name], batch=batch)
                state = "partitioned" if done.swapped else "not swapped yet (run it again)"
                err_console.print(f"{name} {state}; {done.copied} rows copied by this run")
                if name == LEDGER.parent and done.swapped:
                    left = await _repair_pseudonyms(engine, settings)
        finally:
            await engine.dispose()
        return left

    try:
        left = asyncio.run(run())
    except UncopiedColumns as refused:
        err_console.print(str(refused))
        raise typer.Exit(1) from None
    if left:
        raise typer.Exit(1)


async def _repair_pseudonyms(engine: AsyncEngine, settings: Settings) -> bool:
    """`repair_pseudonyms` on the partitioned ledger, said on stderr; whether ids are
    left in clear because the pepper is not configured."""
    pepper = load_pepper(settings.suppression_pepper_file)
    rows = await repair_pseudonyms(engine, pepper)
    name = LEDGER.parent
    if pepper is not None:
        err_console.print(f"{name}: {rows} ids of pseudonymised events rewritten as HMACs")
        return False
    if rows == 0:
        err_console.print(
            f"{name}: no id of a pseudonymised event in clear"
            " (RETENTION_SUPPRESSION_PEPPER_FILE is not set)"
        )
        return False
    err_console.print(
        f"{name}: {rows} ids of pseudonymised events are still in clear and were not"
        " rewritten: RETENTION_SUPPRESSION_PEPPER_FILE is not set; set it and run"
        f" `retention db partition {name}` again"
    )
    return True
