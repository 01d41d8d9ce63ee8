"""`retention kafka acls`: the ACLs a secured cluster needs for this deployment."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from aiokafka.errors import KafkaError

from coordinator.cli._app import ExitCode, err_console, load_settings, out_console
from coordinator.kafka.acls import (
    COORDINATOR_PRINCIPAL,
    AclError,
    apply_acls,
    kafka_acls_commands,
    retention_acls,
    service_principal,
)

__all__ = ["acls", "app"]

app = typer.Typer(no_args_is_help=True, help="Kafka: the ACLs that go with the topics.")


def _services(values: list[str]) -> dict[str, str]:
    services: dict[str, str] = {}
    for value in values:
        name, _, principal = value.partition("=")
        if not name or name in services:
            err_console.print(f"[red]--service {value!r}:[/red] empty or repeated service name")
            raise typer.Exit(ExitCode.BAD_INPUT)
        services[name] = principal or service_principal(name)
    return services


@app.command("acls")
def acls(
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            help="A service, as NAME (principal User:NAME) or NAME=PRINCIPAL; repeat per service.",
        ),
    ] = None,
    coordinator: str = typer.Option(
        COORDINATOR_PRINCIPAL, "--coordinator", help="Principal of the relay and tracker."
    ),
    command_config: str | None = typer.Option(
        None, "--command-config", help="Admin client properties file for the printed commands."
    ),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="Create the ACLs now, connecting with RETENTION_KAFKA_* (an admin principal).",
    ),
) -> None:
    """Print (or create) the ACLs for this deployment's topics, tracker and services."""
    settings = load_settings()
    wanted = retention_acls(
        settings.kafka.topics,
        services=_services(service or []),
        tracker_group=settings.tracker.group_id,
        coordinator=coordinator,
    )
    if not apply:
        for line in kafka_acls_commands(
            wanted, bootstrap=settings.kafka.bootstrap_servers, command_config=command_config
        ):
            out_console.print(line, soft_wrap=True, markup=False, highlight=False)
        return
    try:
        created = asyncio.run(apply_acls(settings.kafka, wanted))
    except AclError as exc:
        err_console.print(f"[red]ACL refused:[/red] {exc}")
        raise typer.Exit(ExitCode.ERRORS) from None
    except KafkaError as exc:
        err_console.print(f"[red]Kafka at {settings.kafka.bootstrap_servers}:[/red] {exc!r}")
        raise typer.Exit(ExitCode.ERRORS) from None
    err_console.print(f"{created} ACL bindings in place on {settings.kafka.bootstrap_servers}")
