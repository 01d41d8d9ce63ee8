"""`retention archive read`: open an entity's archived rows (SPEC §12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from coordinator.cli._app import ExitCode, emit_json, err_console, load_settings
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.crypto.keystore import KeyStoreError, open_keystore
from coordinator.erasure.execute import typed_id
from coordinator.policy.binding import BoundPolicy, bind_policies
from coordinator.policy.model import Action
from coordinator.purge.archive import ArchiveTampered, CryptoShredded, read_archived
from coordinator.settings import Settings
from coordinator.store.db import make_engine

app = typer.Typer(help="The encrypted archive.", no_args_is_help=True)


class _NotFound(Exception):
    pass


def _where(bound: BoundPolicy, entity_type: str, entity_id: str) -> Any:
    """The archive rows of the entity: the policy's own entities by id, or a subject's."""
    archive = bound.archive
    assert archive is not None
    if entity_type == bound.policy.entity_type:
        column = archive.c[bound.id_column.name]
    elif bound.subject is not None and entity_type == bound.subject.entity_type:
        column = archive.c[bound.subject.column]
    else:
        raise _NotFound(f"policy {bound.name!r} archives no {entity_type!r} entities")
    value = typed_id(column, entity_id)
    if value is None:
        raise _NotFound(f"{entity_id!r} cannot be a {entity_type} id of this archive")
    return column == value


async def _read(
    settings: Settings, policies: Any, policy: str, entity_type: str, entity_id: str
) -> list[dict[str, Any]]:
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as conn:
            bound, issues = await bind_policies(conn, policies, settings, only=[policy])
        if policy not in bound:
            found = "; ".join(str(i) for i in issues.get(policy, [])) or "unknown policy"
            raise _NotFound(f"policy {policy!r}: {found}")
        chosen = bound[policy]
        if chosen.policy.action is not Action.ARCHIVE or not chosen.archive_exists:
            raise _NotFound(f"policy {policy!r} has no archive")
        assert chosen.archive is not None
        keys = open_keystore(settings, engine)
        try:
            async with engine.connect() as conn:
                return await read_archived(
                    conn,
                    chosen.archive,
                    keys,
                    id_column=chosen.id_column.name,
                    where=_where(chosen, entity_type, entity_id),
                )
        finally:
            await keys.aclose()
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
    except (_NotFound, KeyStoreError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    except (CryptoShredded, ArchiveTampered) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(ExitCode.ERRORS) from None
    emit_json(rows)
