"""`retention policies`: check the policy file."""

from __future__ import annotations

from pathlib import Path

import typer

from coordinator.cli._app import emit_json, load_settings, out_console
from coordinator.cli._policies import POLICIES_OPTION, exit_on_database_issues, load_policy_set

app = typer.Typer(help="Policy files.", no_args_is_help=True)


@app.command("validate")
def validate(
    policies: Path | None = POLICIES_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Check the file and every table, column, strategy and condition it names; exit 2 if bad."""
    settings = load_settings()
    policy_set = load_policy_set(policies, settings, as_json=as_json)
    exit_on_database_issues(policy_set, settings, None, as_json=as_json)
    names = [p.name for p in policy_set.policies]
    subjects = {
        subject_type: [
            {
                "policy": policy.name,
                "table": policy.table,
                "column": subject.column,
                "on_erasure_request": policy.on_erasure_request.value,
                "exemption_basis": policy.exemption_basis,
            }
            for policy, subject in mapped
        ]
        for subject_type, mapped in policy_set.subject_map().items()
    }
    if as_json:
        emit_json(
            {
                "ok": True,
                "source": policy_set.source,
                "policies": names,
                "subjects": subjects,
                "errors": [],
            }
        )
        return
    out_console.print(f"[green]{policy_set.source}: {len(names)} policies valid[/green]")
    for subject_type, mapped in subjects.items():
        tables = ", ".join(
            f"{m['table']}.{m['column']}" + (" (exempt)" if m["exemption_basis"] else "")
            for m in mapped
        )
        out_console.print(f"subject {subject_type}: {tables}", markup=False, highlight=False)
