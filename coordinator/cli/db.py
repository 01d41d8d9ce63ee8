"""`retention db`: the coordinator's schema."""

from __future__ import annotations

import asyncio

import typer

from coordinator.cli._app import err_console, load_settings
from coordinator.migrate import upgrade

__all__ = ["app", "db_upgrade"]

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target alembic revision.")) -> None:
    """Create or migrate every table the coordinator owns."""
    settings = load_settings()
    asyncio.run(upgrade(settings.database_url.get_secret_value(), revision))
    err_console.print(f"database at revision {revision}")
