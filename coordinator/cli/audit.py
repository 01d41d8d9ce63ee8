"""`retention audit`: the tamper-evident log."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from aiokafka.errors import KafkaError

from coordinator.cli._app import ExitCode, emit_json, err_console, load_settings, out_console
from coordinator.clock import SystemClock
from coordinator.evidence import evidence_signer, evidence_verifier
from coordinator.evidence.checkpoints import ChainReport, take_head, verify_chain
from coordinator.evidence.heads import (
    HeadCheck,
    compare_with_head,
    newest_published_head,
    publish_checkpoints,
)
from coordinator.settings import Settings
from coordinator.store.db import make_engine
from schemas.errors import error_text

__all__ = ["app", "checkpoint", "verify"]

app = typer.Typer(help="Tamper-evident audit log.", no_args_is_help=True)


async def _verify(
    settings: Settings, *, full: bool, published: bool
) -> tuple[ChainReport, HeadCheck | None]:
    verifier = evidence_verifier(settings.signatures)
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as conn:
            report = await verify_chain(conn, full=full, verifier=verifier)
            if not published:
                return report, None
            head = await newest_published_head(settings.kafka, verifier)
            return report, await compare_with_head(conn, head, last_seq=report.last_seq)
    finally:
        await engine.dispose()


@app.command("verify")
def verify(
    full: bool = typer.Option(
        False, "--full", help="Walk every row left, not only those after the last checkpoint."
    ),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="Skip the comparison with the head published on the audit topic "
        "(then cutting off the newest rows goes unnoticed).",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Check the hash chain and compare it with the last published head; exit 1 naming
    the first broken row."""
    settings = load_settings()
    try:
        report, head = asyncio.run(_verify(settings, full=full, published=not offline))
    except (KafkaError, LookupError, OSError) as exc:
        err_console.print(
            f"[red]could not read the published heads[/red] ({error_text(exc)}); "
            "--offline checks the database alone"
        )
        raise typer.Exit(ExitCode.ERRORS) from None
    broken = report.broken or (head.broken if head is not None else None)
    if as_json:
        document: dict[str, Any] = {
            "ok": broken is None,
            "rows_checked": report.rows_checked,
            "from_seq": report.from_seq,
            "last_seq": report.last_seq,
            "published_head": None
            if head is None or head.published is None
            else {"seq": head.published.last_seq, "at": head.published.at.isoformat()},
            "broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
        }
        emit_json(document)
    elif broken is None:
        since = "" if report.from_seq <= 1 else f" (from checkpoint, row {report.from_seq} on)"
        witness = (
            "not compared with a published head (--offline)"
            if head is None
            else "no head published yet"
            if head.published is None
            else f"published head at row {head.published.last_seq} holds"
        )
        out_console.print(
            f"[green]audit chain intact[/green]: {report.rows_checked} rows verified{since}; "
            f"{witness}"
        )
    else:
        err_console.print(f"[red]audit chain broken at row {broken.seq}[/red]: {broken.reason}")
    if broken is not None:
        raise typer.Exit(ExitCode.ERRORS)


@app.command("checkpoint")
def checkpoint() -> None:
    """Sign a head at the chain's end (after checking the rows since the last one) and
    publish every unpublished checkpoint; `serve` does this daily."""
    settings = load_settings()

    async def run() -> tuple[int | None, int]:
        engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
        now = SystemClock().now()
        try:
            async with engine.begin() as conn:
                point = await take_head(conn, now=now, signer=evidence_signer(settings.signatures))
            sent = await publish_checkpoints(engine, settings.kafka, now=now)
            return (point.last_seq if point else None), sent
        finally:
            await engine.dispose()

    seq, sent = asyncio.run(run())
    taken = f"head signed at row {seq}" if seq is not None else "no new rows since the last head"
    err_console.print(f"{taken}; {sent} checkpoint(s) published")
