"""`retention serve`: scheduler, outbox relay, completion tracker and HTTP API in one process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import structlog
import typer

from coordinator.api.tokens import TokensFileError
from coordinator.cli._app import ExitCode, err_console, load_settings
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set
from coordinator.console.sessions import ConsoleSecretError
from coordinator.operations.notify.webhooks import WebhooksFileError
from coordinator.policy.model import PolicySet
from coordinator.serve import Service, ServiceFailed
from coordinator.settings import Settings
from schemas.logs import configure_logging

__all__ = ["serve"]

log = structlog.get_logger("retention.serve")


async def _serve(settings: Settings, policy_set: PolicySet, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stopper(stop, signum))
    try:
        await Service(settings, policy_set, port=port).run(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _stopper(stop: asyncio.Event, signum: int) -> Callable[[], None]:
    def handle() -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    return handle


def serve(
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="HTTP port (default: RETENTION_HTTP_PORT, 8080)."
    ),
    policies: Path | None = POLICIES_OPTION,
) -> None:
    """Run the scheduler, outbox relay, completion tracker and HTTP API until SIGTERM."""
    # A long-running service logs what it does; one-shot commands default to warnings.
    configure_logging(os.environ.get("RETENTION_LOG_LEVEL", "INFO"))
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=False)
    chosen = port if port is not None else settings.http_port
    err_console.print(
        f"serving on http://{settings.serve.host}:{chosen} "
        f"({len(policy_set.policies)} policies from {policy_set.source}); Ctrl-C stops"
    )
    if settings.api_tokens_file is None:
        err_console.print(
            "[yellow]RETENTION_API_TOKENS_FILE is not set: every /v1 and /ui route answers "
            "503[/yellow]"
        )
    else:
        err_console.print(f"console: http://{settings.serve.host}:{chosen}/ui/")
    try:
        asyncio.run(_serve(settings, policy_set, chosen))
    except TokensFileError as exc:
        err_console.print(f"[red]RETENTION_API_TOKENS_FILE:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    except ConsoleSecretError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    except WebhooksFileError as exc:
        err_console.print(f"[red]RETENTION_WEBHOOKS_FILE:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    except ServiceFailed as exc:
        err_console.print(f"[red]retention serve stopped:[/red] {exc}")
        raise typer.Exit(ExitCode.ERRORS) from None
