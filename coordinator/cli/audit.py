"""`retention audit`: the tamper-evident log."""

from __future__ import annotations

import asyncio

import typer

from coordinator import audit as audit_log
from coordinator.cli._app import ExitCode, emit_json, err_console, load_settings, out_console
from coordinator.store.db import make_engine

__all__ = ["app", "verify"]

app = typer.Typer(help="Tamper-evident audit log.", no_args_is_help=True)


async def _verify(url: str) -> tuple[int, audit_log.BrokenLink | None]:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await audit_log.verify(conn)
    finally:
        await engine.dispose()


@app.command("verify")
def verify(
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Walk the hash chain; exit 1 naming the first broken row."""
    settings = load_settings()
    checked, broken = asyncio.run(_verify(settings.database_url.get_secret_value()))
    if as_json:
        emit_json(
            {
                "ok": broken is None,
                "rows_checked": checked,
                "broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
            }
        )
    elif broken is None:
        out_console.print(f"[green]audit chain intact[/green]: {checked} rows verified")
    else:
        err_console.print(f"[red]audit chain broken at row {broken.seq}[/red]: {broken.reason}")
    if broken is not None:
        raise typer.Exit(ExitCode.ERRORS)
