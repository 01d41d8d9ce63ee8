"""`retention plan` (dry run) and `retention run` (purge), both top-level commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from coordinator.cli._app import ExitCode, actor, emit_json, err_console, load_settings, out_console
from coordinator.cli._policies import (
    POLICIES_OPTION,
    exit_on_database_issues,
    load_policy_set,
    report_issues,
)
from coordinator.policy.model import PolicySet
from coordinator.purge.runner import PlanReport, Runner, RunReport
from coordinator.settings import Settings
from coordinator.store.db import make_engine

__all__ = ["plan", "run"]

POLICY_OPTION = typer.Option(None, "--policy", help="Only this policy (repeatable).")
JSON_OPTION = typer.Option(False, "--json", help="One JSON document on stdout.")


def _check_names(policy_set: PolicySet, only: list[str] | None) -> None:
    known = {p.name for p in policy_set.policies}
    unknown = sorted(set(only or []) - known)
    if unknown:
        err_console.print(
            f"[red]unknown policy {', '.join(unknown)}[/red] (known: {', '.join(sorted(known))})"
        )
        raise typer.Exit(ExitCode.BAD_INPUT)


def _age(days: float | None) -> str:
    return "-" if days is None else f"{days:.1f} d"


async def _plan(policy_set: PolicySet, settings: Settings, only: list[str] | None) -> PlanReport:
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        return await Runner(engine, policy_set, settings).plan(only)
    finally:
        await engine.dispose()


def plan(
    policies: Path | None = POLICIES_OPTION,
    policy: list[str] | None = POLICY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Dry run: per policy what is due, held, how old, and what the guard would say."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    _check_names(policy_set, policy)
    report = asyncio.run(_plan(policy_set, settings, policy))
    if report.issues and not as_json:
        issues = [str(i) for found in report.issues.values() for i in found]
        report_issues(policy_set.source, issues, as_json=False)
    if as_json:
        emit_json(report.as_dict())
    else:
        table = Table(title="retention plan (dry run: nothing changed)")
        for column in ("policy", "action", "cutoff", "due", "held", "oldest due", "guard"):
            table.add_column(column, justify="right" if column in ("due", "held") else "left")
        for item in report.plans:
            table.add_row(
                item.policy,
                item.action,
                item.cutoff.isoformat(timespec="seconds"),
                str(item.due),
                str(item.held),
                _age(item.oldest_age_days),
                "[red]" + item.guard + "[/red]" if item.guard else "[green]ok[/green]",
            )
        out_console.print(table)
    if report.issues:
        raise typer.Exit(ExitCode.BAD_INPUT)


async def _run(
    policy_set: PolicySet,
    settings: Settings,
    only: list[str] | None,
    *,
    force: bool,
    show_progress: bool,
) -> RunReport:
    engine = make_engine(settings.database_url.get_secret_value())
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show_progress,
    )
    tasks: dict[str, TaskID] = {}

    def advance(name: str, processed: int, due: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=due)
        progress.update(tasks[name], completed=processed)

    try:
        with progress:
            return await Runner(engine, policy_set, settings).run(
                only, force=force, progress=advance, actor=actor("cli")
            )
    finally:
        await engine.dispose()


def run(
    policies: Path | None = POLICIES_OPTION,
    policy: list[str] | None = POLICY_OPTION,
    force: bool = typer.Option(
        False, "--force", help="Run even where the mass-deletion guard refuses."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Purge what is due, policy by policy; exit 1 if any policy failed.

    A policy file the database contradicts (missing table or column, a condition on an
    unknown column) exits 2 before the run starts, leaving the database untouched.
    """
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    _check_names(policy_set, policy)
    exit_on_database_issues(policy_set, settings, policy, as_json=as_json)
    report = asyncio.run(_run(policy_set, settings, policy, force=force, show_progress=not as_json))
    if as_json:
        emit_json(report.as_dict())
    else:
        table = Table(title=f"retention run {report.run_id}")
        for column in ("policy", "action", "status", "processed", "held", "events", "oldest left"):
            table.add_column(column)
        for outcome in report.outcomes:
            status = "[green]ok[/green]" if outcome.status == "ok" else "[red]error[/red]"
            table.add_row(
                outcome.policy,
                outcome.action,
                status,
                str(outcome.processed),
                str(outcome.held),
                str(outcome.events),
                _age(outcome.oldest_unprocessed_days),
            )
        out_console.print(table)
        for outcome in report.outcomes:
            for error in outcome.errors:
                err_console.print(f"[red]{outcome.policy}:[/red] {error}", highlight=False)
        events = sum(outcome.events for outcome in report.outcomes)
        if events:
            err_console.print(
                f"{events} events written to the outbox: `retention serve` publishes them, "
                "or `retention relay --drain` now.",
                soft_wrap=True,
            )
    if not report.ok:
        raise typer.Exit(ExitCode.ERRORS)
