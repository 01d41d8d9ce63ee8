"""The root typer app and what every command shares: settings, exit codes, output."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.copies.crypto.keystore import KeyStore, open_keystore
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = [
    "ExitCode",
    "actor",
    "app",
    "emit_json",
    "err_console",
    "load_settings",
    "os_user",
    "out_console",
    "read_database",
    "with_keystore",
    "write_database",
]

T = TypeVar("T")

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


def os_user() -> str:
    """The OS account this process runs as: from the password database by effective uid,
    not from $USER or $LOGNAME, which anyone can set; the bare uid if it has no entry."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def actor(by: str) -> str:
    """Who a CLI write records (audit entries, hold and request records): the CLI acts
    with the database's credentials, so `--by` says who asked and the OS user who ran it."""
    return f"{by} (os user {os_user()})"


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


def read_database(settings: Settings, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run one read-only `query` on a connection of its own, from synchronous CLI code."""
    return asyncio.run(_on_database(settings, query, write=False))


def write_database(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction on a connection of its own, from synchronous CLI code:
    committed if it returns, rolled back if it raises."""
    return asyncio.run(_on_database(settings, work, write=True))


async def with_keystore(
    settings: Settings,
    work: Callable[[AsyncEngine, KeyStore], Awaitable[T]],
    *,
    pool_size: int = 5,
) -> T:
    """`work(engine, keys)` with the data's database and the key store open; both are
    closed afterwards, whatever `work` did."""
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=pool_size)
    try:
        keys = open_keystore(settings, engine)
        try:
            return await work(engine, keys)
        finally:
            await keys.aclose()
    finally:
        await engine.dispose()


async def _on_database(
    settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]], *, write: bool
) -> T:
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.begin() if write else engine.connect() as conn:
            return await work(conn)
    finally:
        await engine.dispose()
