"""The `retention` command line (SPEC §6)."""

from __future__ import annotations

import asyncio

import typer

from coordinator.migrate import upgrade
from coordinator.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="retention",
    help="Enforce data-retention policies across services, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target alembic revision.")) -> None:
    """Create or migrate every table the coordinator owns."""
    settings = Settings()
    asyncio.run(upgrade(settings.database_url.get_secret_value(), revision))
    typer.echo(f"database at revision {revision}", err=True)


def main() -> None:
    app()
