"""`retention relay`: an operator extra that runs the outbox relay on its own.

`retention serve` runs the relay; `retention run` only writes the outbox. This command
is for operators and benchmarks: `--drain` publishes what is pending and exits (e.g.
after a one-shot `retention run`), without it the relay runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal

import typer

from coordinator.cli._app import ExitCode, emit_json, err_console, load_settings
from coordinator.kafka.admin import TopicsRefused, ensure_topics
from coordinator.outbox.relay import OutboxRelay
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = ["relay"]


async def _relay(settings: Settings, *, drain: bool) -> tuple[int, int]:
    await ensure_topics(settings.kafka)
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=2)
    try:
        async with OutboxRelay(
            engine, settings.kafka, settings=settings.relay, signatures=settings.signatures
        ) as relay:
            if drain:
                published = await relay.drain()
            else:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
                await relay.run_forever(stop)
                published = 0
            return published, await relay.backlog()
    finally:
        await engine.dispose()


def relay(
    drain: bool = typer.Option(False, "--drain", help="Publish what is pending, then exit."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Publish outbox rows to the events topic (operator extra; `serve` runs it too)."""
    settings = load_settings()
    # stdout carries only the --json document: `main` already sends every log to stderr
    # through the one pipeline (schemas.logs.configure_logging); don't reconfigure here.
    if not drain:
        err_console.print(f"relaying the outbox to {settings.kafka.topics.events}; Ctrl-C stops")
    try:
        published, unpublished = asyncio.run(_relay(settings, drain=drain))
    except TopicsRefused as exc:
        err_console.print(f"[red]retention relay:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.ERRORS) from None
    if as_json:
        emit_json({"published": published, "unpublished": unpublished})
    else:
        err_console.print(f"published {published} events; {unpublished} still unpublished")
