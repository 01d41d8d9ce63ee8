"""What the policy commands share: finding and loading the policy file."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import typer

from coordinator.cli._app import ExitCode, emit_json, err_console
from coordinator.policy.binding import bind_policies
from coordinator.policy.model import PolicyFileError, PolicyIssue, PolicySet, load_policies
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = [
    "POLICIES_OPTION",
    "database_issues",
    "exit_on_database_issues",
    "load_policy_set",
    "report_issues",
]

POLICIES_OPTION = typer.Option(
    None, "--policies", help="Policy YAML file (default: RETENTION_POLICIES)."
)


def report_issues(source: str, issues: list[str], *, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": False, "source": source, "errors": issues})
        return
    err_console.print(f"[red]{len(issues)} problem(s) in {source}:[/red]")
    for issue in issues:
        err_console.print(f"  {source}:{issue}", markup=False, highlight=False, soft_wrap=True)


def load_policy_set(path: Path | None, settings: Settings, *, as_json: bool) -> PolicySet:
    """The policy file from --policies or RETENTION_POLICIES; exit 2 listing every problem."""
    chosen = path or settings.policies
    if chosen is None:
        err_console.print("[red]no policy file:[/red] pass --policies or set RETENTION_POLICIES")
        raise typer.Exit(ExitCode.BAD_INPUT)
    try:
        return load_policies(chosen, hook_modules=settings.allowed_hook_modules())
    except PolicyFileError as exc:
        report_issues(exc.source, [str(issue) for issue in exc.issues], as_json=as_json)
        raise typer.Exit(ExitCode.BAD_INPUT) from None


async def database_issues(
    policy_set: PolicySet, settings: Settings, only: Sequence[str] | None = None
) -> list[PolicyIssue]:
    """What binding the policies to the live schema finds wrong; reads only."""
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as conn:
            _, issues = await bind_policies(conn, policy_set, settings, only=only)
    finally:
        await engine.dispose()
    return sorted((i for found in issues.values() for i in found), key=lambda i: i.line or 0)


def exit_on_database_issues(
    policy_set: PolicySet, settings: Settings, only: Sequence[str] | None, *, as_json: bool
) -> None:
    """Exit 2 listing every problem the database reveals, before anything is written."""
    issues = asyncio.run(database_issues(policy_set, settings, only))
    if issues:
        report_issues(policy_set.source, [str(i) for i in issues], as_json=as_json)
        raise typer.Exit(ExitCode.BAD_INPUT)
