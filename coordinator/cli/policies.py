"""`retention policies`: check the policy file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from coordinator.cli._app import ExitCode, emit_json, load_settings, out_console
from coordinator.cli._policies import POLICIES_OPTION, load_policy_set, report_issues
from coordinator.db import make_engine
from coordinator.policies import PolicyIssue, PolicySet
from coordinator.policy_binding import bind_policies
from coordinator.settings import Settings

app = typer.Typer(help="Policy files.", no_args_is_help=True)


async def _database_issues(policy_set: PolicySet, settings: Settings) -> list[PolicyIssue]:
    engine = make_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        async with engine.connect() as conn:
            _, issues = await bind_policies(conn, policy_set, settings)
    finally:
        await engine.dispose()
    return [issue for found in issues.values() for issue in found]


@app.command("validate")
def validate(
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Check the file and every table, column, strategy and condition it names; exit 2 if bad."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    issues = asyncio.run(_database_issues(policy_set, settings))
    if issues:
        ordered = sorted(issues, key=lambda i: i.line or 0)
        report_issues(policy_set.source, [str(i) for i in ordered], as_json=as_json)
        raise typer.Exit(ExitCode.BAD_INPUT)
    names = [p.name for p in policy_set.policies]
    if as_json:
        emit_json({"ok": True, "source": policy_set.source, "policies": names, "errors": []})
    else:
        out_console.print(f"[green]{policy_set.source}: {len(names)} policies valid[/green]")
