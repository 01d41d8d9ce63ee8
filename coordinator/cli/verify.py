"""`retention verify`: ask services whether an entity's data is really gone (SPEC §12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from coordinator.cli._app import (
    ExitCode,
    actor,
    emit_json,
    err_console,
    load_settings,
    out_console,
)
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.cli.status import parse_entity
from coordinator.clock import SystemClock
from coordinator.copies.verification import request
from coordinator.store.db import make_engine

__all__ = ["verify"]


def verify(
    entity: str | None = typer.Argument(
        None, metavar="[ENTITY_TYPE:ID]", help="The entity to verify, e.g. user:42."
    ),
    by: str | None = typer.Option(None, "--by", help="Who asks (required with ENTITY)."),
    sample: bool = typer.Option(
        False, "--sample", help="Run one sampling pass now over policies with verify_sample."
    ),
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Send a verify event: every service that acked one of the entity's deletions answers
    how many records it still holds. The answers show in `retention status`."""
    if (entity is None) == (not sample):
        err_console.print("[red]give either ENTITY_TYPE:ID or --sample[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    settings = load_settings()
    if entity is not None:
        if not by:
            err_console.print("[red]--by is required[/red]: who asks for the verification")
            raise typer.Exit(ExitCode.BAD_INPUT)
        entity_type, entity_id = parse_entity(entity)
        # SPEC §10: the CLI records the operating-system user beside --by.
        asked = asyncio.run(
            _one(settings.database_url.get_secret_value(), entity_type, entity_id, actor(by))
        )
        if asked is None:
            err_console.print(
                f"no service acked a deletion of {entity_type}:{entity_id}: nothing to verify"
            )
            raise typer.Exit(ExitCode.ERRORS)
        found = [asked]
    else:
        policy_set = load_policy_set(policies, settings, as_json=as_json)
        found = asyncio.run(_sample(settings.database_url.get_secret_value(), policy_set.policies))
    documents = [_document(r) for r in found]
    if as_json:
        emit_json({"requested": documents})
        return
    if not documents:
        out_console.print("no deletion due for a sampled verification")
    for d in documents:
        out_console.print(
            f"verify event {d['event_id']} for {d['entity_type']}:{d['entity_id']} asks "
            f"{', '.join(d['services'])}; it leaves with the relay"
        )


async def _one(url: str, entity_type: str, entity_id: str, actor: str) -> request.Requested | None:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await request.request_verify(
                conn,
                entity_type,
                entity_id,
                policy=request.ON_DEMAND,
                trigger="on_demand",
                by=actor,
                now=SystemClock().now(),
            )
    finally:
        await engine.dispose()


async def _sample(url: str, policies: Any) -> list[request.Requested]:
    engine = make_engine(url, pool_size=1)
    try:
        return await request.sample_all(engine, policies, now=SystemClock().now())
    finally:
        await engine.dispose()


def _document(r: request.Requested) -> dict[str, Any]:
    return {
        "event_id": str(r.event_id),
        "entity_type": r.entity_type,
        "entity_id": r.entity_id,
        "services": list(r.services),
    }
