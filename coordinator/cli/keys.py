"""`retention keys generate`: Ed25519 key pairs for the coordinator and each service."""

from __future__ import annotations

from pathlib import Path

import typer

from coordinator.cli._app import ExitCode, err_console, out_console
from schemas.signing import generate_key_files

app = typer.Typer(help="Signing keys (SPEC §9).", no_args_is_help=True)

OUT_OPTION = typer.Option(..., "--out", help="Folder to write NAME.key and NAME.pub to.")
NAME_OPTION = typer.Option(..., "--name", help="coordinator, or the service's name.")


@app.command("generate")
def generate(
    out: Path = OUT_OPTION,
    name: str = NAME_OPTION,
) -> None:
    """Write NAME.key (PEM PKCS#8, mode 0600) and NAME.pub (ed25519:<base64>)."""
    if not name or "/" in name or name.startswith("."):
        err_console.print(f"[red]--name {name!r} is not a file name[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    try:
        key_path, pub_path = generate_key_files(out, name)
    except FileExistsError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print(f"private key: {key_path} (keep it secret)")
    out_console.print(f"public key:  {pub_path.read_text(encoding='ascii').strip()}")
