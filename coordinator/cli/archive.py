"""`retention archive read`: open an entity's archived rows (SPEC §12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from coordinator.cli._app import ExitCode, emit_json, err_console, load_settings
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.crypto.keystore import KeyStoreError
from coordinator.purge.archive import ArchiveTampered, CryptoShredded
from coordinator.purge.archive_read import ArchiveNotFound, read_entity
from coordinator.settings import Settings
from coordinator.store.db import make_engine

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
