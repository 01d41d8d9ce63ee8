"""The root typer app and what every command shares: settings, exit codes, output."""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from typing import Any

import typer
from rich.console import Console

from coordinator.settings import Settings

__all__ = ["ExitCode", "app", "emit_json", "err_console", "load_settings", "out_console"]

app = typer.Typer(
    name="retention",
    help="Enforce data-retention policies across services, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out_console = Console()
# Progress, logs and human messages go to stderr so `--json` stdout stays one document.
err_console = Console(stderr=True)


class ExitCode(IntEnum):
    OK = 0
    ERRORS = 1
    BAD_INPUT = 2


def load_settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        err_console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(ExitCode.BAD_INPUT) from None


def emit_json(document: Any) -> None:
    """Write one JSON document to stdout, and nothing else."""
    json.dump(document, sys.stdout, indent=2, default=str, sort_keys=True)
    sys.stdout.write("\n")
