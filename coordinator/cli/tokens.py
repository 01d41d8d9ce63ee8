"""`retention tokens`: named, scoped tokens for the HTTP API (SPEC §10)."""

from __future__ import annotations

from pathlib import Path

import typer

from coordinator.api.tokens import Scope, TokensFileError, add_token, new_token
from coordinator.cli._app import ExitCode, emit_json, err_console, out_console

__all__ = ["app", "create"]

app = typer.Typer(help="API tokens: named, scoped, stored as hashes.", no_args_is_help=True)

SCOPE_OPTION = typer.Option(..., "--scope", help="read, write or admin.")
FILE_OPTION = typer.Option(
    None,
    "--file",
    help="Also add the entry to this tokens file (created mode 0600 when missing; "
    "rewritten whole, comments are not kept).",
)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Who uses the token; the actor of its writes."),
    scope: Scope = SCOPE_OPTION,
    file: Path | None = FILE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Print a new random token once, and the line to add to RETENTION_API_TOKENS_FILE.

    Only the token's SHA-256 goes into the file: the token itself cannot be shown again.
    """
    try:
        created = new_token(name, scope)
        if file is not None:
            add_token(file, created.entry)
    except TokensFileError as exc:
        err_console.print(f"[red]{exc}[/red]", markup=True, highlight=False)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    entry = created.entry
    if as_json:
        emit_json(
            {
                "name": entry.name,
                "scope": entry.scope.value,
                "token": created.token,
                "sha256": entry.sha256,
                "line": entry.line(),
                "file": str(file) if file is not None else None,
            }
        )
        return
    out_console.print(
        f"token for {entry.name} (scope {entry.scope.value}), shown once:",
        markup=False,
        highlight=False,
    )
    out_console.print(created.token, markup=False, highlight=False, soft_wrap=True)
    if file is not None:
        out_console.print(f"added to {file}", markup=False, highlight=False)
    else:
        out_console.print(
            "add this line under `tokens:` in RETENTION_API_TOKENS_FILE:",
            markup=False,
            highlight=False,
        )
    out_console.print(entry.line(), markup=False, highlight=False, soft_wrap=True)
