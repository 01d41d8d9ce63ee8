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
from coordinator.store.db import bound_lock_waits, make_engine, name_sessions

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
    "start_command",
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


_WAIT_AS_LONG_AS_IT_TAKES = frozenset({"serve", "relay", "run", "db"})
"""Commands whose lock waits stay unbounded: the services and the purge run wait for
locks by design, and `db`'s migrations wait patiently on their own
(coordinator/store/migrations/patience.py); a build CONCURRENTLY waits for every older
transaction, which a bound would fail."""
_command: list[str] = []


def start_command(argv: list[str]) -> None:
    """For the `retention` entry point, before the command runs: name this process's
    database sessions after the command (`retention holds`, `retention serve`), and
    have `load_settings` bound its lock waits unless it is one that waits."""
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), "")
    _command[:] = [command]
    name_sessions(command or "cli")


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValueError as exc:
        err_console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    if _command and _command[0] not in _WAIT_AS_LONG_AS_IT_TAKES:
        bound_lock_waits(settings.cli_lock_timeout_s)
    return settings


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
