"""`retention keys`: Ed25519 signing keys (SPEC §9), the archives' key-encryption key and
the key store (SPEC §12)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.cli._app import ExitCode, err_console, load_settings, out_console, with_keystore
from coordinator.copies.crypto.keystore import KeyStore, KeyStoreError
from coordinator.copies.crypto.provider import LocalKeyProvider, write_kek
from schemas.signing import generate_key_files
from schemas.suppression import write_pepper

__all__ = ["app"]

app = typer.Typer(help="Signing keys and encryption keys.", no_args_is_help=True)

KEK_FILE = "kek.hex"
PEPPER_FILE = "suppression.pepper"

OUT_OPTION = typer.Option(..., "--out", help="Folder to write the key file(s) to.")
NAME_OPTION = typer.Option(
    None,
    "--name",
    help="A signing key pair NAME.key / NAME.pub: coordinator, or the service's name.",
)
KEK_OPTION = typer.Option(
    False,
    "--kek",
    help=f"Write a key-encryption key, {KEK_FILE} (mode 0600), for RETENTION_KEK_FILE.",
)

PEPPER_OPTION = typer.Option(
    False,
    "--pepper",
    help=f"Write the suppression list's pepper, {PEPPER_FILE} (mode 0600), for "
    "RETENTION_SUPPRESSION_PEPPER_FILE (coordinator and services).",
)


@app.command("generate")
def generate(
    out: Path = OUT_OPTION,
    name: str | None = NAME_OPTION,
    kek: bool = KEK_OPTION,
    pepper: bool = PEPPER_OPTION,
) -> None:
    """Write new keys into --out: a signing key pair (--name; NAME.key is PEM PKCS#8, mode
    0600, NAME.pub is ed25519:<base64>), the KEK (--kek) or the suppression pepper
    (--pepper). Nothing is ever overwritten."""
    if [kek, pepper, name is not None].count(True) != 1:
        err_console.print("[red]say which key: --name NAME (signing), --kek or --pepper[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    if name is not None:
        _signing_pair(out, name)
        return
    if pepper:
        _pepper(out / PEPPER_FILE)
        return
    path = out / KEK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        kek_id = write_kek(path)
    except FileExistsError:
        err_console.print(f"[red]{path} exists; not overwritten[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print(f"key-encryption key: {path} ({kek_id}); keep it secret and backed up")


def _pepper(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pepper(path)
    except FileExistsError:
        err_console.print(f"[red]{path} exists; not overwritten[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print(
        f"suppression pepper: {path}; give the same file to the coordinator and every "
        "service that calls is_erased, and keep it secret"
    )


def _signing_pair(out: Path, name: str) -> None:
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


@app.command("init-store")
def init_store() -> None:
    """Create the key store's table in RETENTION_KEYSTORE_URL's database (idempotent)."""
    settings = load_settings()

    async def create(_: AsyncEngine, store: KeyStore) -> None:
        await store.create_schema()

    try:
        asyncio.run(with_keystore(settings, create))
    except KeyStoreError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print("key store ready")


PREVIOUS_OPTION = typer.Option(
    ..., "--previous-kek", help="The KEK file the data keys are wrapped under now."
)


@app.command("rotate")
def rotate(previous: Path = PREVIOUS_OPTION) -> None:
    """Re-wrap every data key from --previous-kek to RETENTION_KEK_FILE's KEK.

    The archived data is not touched. Resumable: run it again after an interruption.
    Processes still holding the previous KEK cannot unwrap re-wrapped keys: stop runs
    (or accept failed archive batches, retried next run) until they use the new file.
    """
    settings = load_settings()
    try:
        old = LocalKeyProvider.from_file(previous)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]--previous-kek: {type(exc).__name__}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None

    async def run(_: AsyncEngine, store: KeyStore) -> int:
        return await store.rewrap(old)

    try:
        count = asyncio.run(with_keystore(settings, run))
    except KeyStoreError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print(f"{count} data key(s) re-wrapped under RETENTION_KEK_FILE's KEK")
