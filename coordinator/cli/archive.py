"""`retention archive read`: open an entity's archived rows (SPEC §12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.cli._app import (
    ExitCode,
    actor,
    emit_json,
    err_console,
    load_settings,
    with_keystore,
)
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.clock import SystemClock
from coordinator.copies.crypto.keystore import KeyStore, KeyStoreError
from coordinator.purge.archive import ArchiveTampered, CryptoShredded
from coordinator.purge.archive_migrate import Encrypted, MigrationError, encrypt_plain_archive
from coordinator.purge.archive_read import ArchiveNotFound, read_entity
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = ["app"]

app = typer.Typer(help="The encrypted archive.", no_args_is_help=True)


async def _read(
    settings: Settings, policies: Any, policy: str, entity_type: str, entity_id: str
) -> list[dict[str, Any]]:
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        return await read_entity(engine, settings, policies, policy, entity_type, entity_id)
    finally:
        await engine.dispose()


@app.command("read")
def read(
    policy: str = typer.Option(..., "--policy", help="The archive policy."),
    entity: str = typer.Option(
        ..., "--entity", help="type:id: the policy's entity, or its subject (all their rows)."
    ),
    policies: Path | None = POLICIES_OPTION,
) -> None:
    """Decrypt and print (JSON) the archived rows of one entity. Admin use only: the
    output is the personal data itself."""
    entity_type, sep, entity_id = entity.partition(":")
    if not sep or not entity_type or not entity_id:
        err_console.print("[red]--entity must be type:id[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=False)
    try:
        rows = asyncio.run(_read(settings, policy_set, policy, entity_type, entity_id))
    except (ArchiveNotFound, KeyStoreError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    except (CryptoShredded, ArchiveTampered) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(ExitCode.ERRORS) from None
    emit_json(rows)


@app.command("encrypt")
def encrypt(
    policy: str = typer.Option(..., "--policy", help="The archive policy whose plain archive."),
    by: str = typer.Option(..., "--by", help="Who migrates (recorded with the OS user)."),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, max=50_000),
    vacuum: bool = typer.Option(
        True, "--vacuum/--no-vacuum", help="VACUUM FULL at the end (no old clear row versions)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    policies: Path | None = POLICIES_OPTION,
) -> None:
    """Encrypt an archive made before encryption in place, batch by batch. Safe to
    interrupt and run again: it resumes with the rows not sealed yet."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)

    async def run(engine: AsyncEngine, keys: KeyStore) -> Encrypted:
        return await encrypt_plain_archive(
            engine,
            keys,
            policy_set,
            policy,
            now=SystemClock().now(),
            by=actor(by),
            batch_size=batch_size,
            vacuum=vacuum,
            after_batch=lambda r: err_console.print(
                f"{r.table}: {r.rows} rows sealed", highlight=False
            ),
        )

    try:
        done = asyncio.run(with_keystore(settings, run, pool_size=1))
    except (MigrationError, KeyStoreError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if as_json:
        emit_json(done.as_dict())
    elif done.already:
        err_console.print(f"{done.table} is encrypted already")
    else:
        err_console.print(f"{done.table}: encrypted ({done.rows} rows sealed now)")
