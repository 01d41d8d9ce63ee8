"""`retention keys`: the key-encryption key of archives, and the key store (SPEC §12)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from coordinator.cli._app import ExitCode, err_console, load_settings, out_console
from coordinator.crypto.keystore import KeyStoreError, open_keystore
from coordinator.crypto.provider import LocalKeyProvider, write_kek
from coordinator.db import make_engine

app = typer.Typer(help="Encryption keys.", no_args_is_help=True)

KEK_FILE = "kek.hex"

OUT_OPTION = typer.Option(..., "--out", help="Folder to write the key file(s) to.")
KEK_OPTION = typer.Option(
    False,
    "--kek",
    help=f"Write a key-encryption key, {KEK_FILE} (mode 0600), for RETENTION_KEK_FILE.",
)


@app.command("generate")
def generate(out: Path = OUT_OPTION, kek: bool = KEK_OPTION) -> None:
    """Write new keys into --out; an existing key file is never overwritten."""
    if not kek:
        err_console.print("[red]say which key: --kek[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT)
    path = out / KEK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        kek_id = write_kek(path)
    except FileExistsError:
        err_console.print(f"[red]{path} exists; not overwritten[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print(f"key-encryption key: {path} ({kek_id}); keep it secret and backed up")


@app.command("init-store")
def init_store() -> None:
    """Create the key store's table in RETENTION_KEYSTORE_URL's database (idempotent)."""
    settings = load_settings()

    async def create() -> None:
        engine = make_engine(settings.database_url.get_secret_value())
        try:
            store = open_keystore(settings, engine)
            try:
                await store.create_schema()
            finally:
                await store.aclose()
        finally:
            await engine.dispose()

    try:
        asyncio.run(create())
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

    async def run() -> int:
        engine = make_engine(settings.database_url.get_secret_value())
        try:
            store = open_keystore(settings, engine)
            try:
                return await store.rewrap(old)
            finally:
                await store.aclose()
        finally:
            await engine.dispose()

    try:
        count = asyncio.run(run())
    except KeyStoreError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    out_console.print(f"{count} data key(s) re-wrapped under RETENTION_KEK_FILE's KEK")
