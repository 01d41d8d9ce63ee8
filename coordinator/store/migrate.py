"""Schema migrations (alembic) for every table the coordinator owns."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["alembic_config", "upgrade"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    # The option goes through ConfigParser interpolation: a `%` in the password would make
    # it raise with the whole URL (password included) in its message.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _upgrade(database_url: str, revision: str) -> None:
    command.upgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`; env.py runs its own event loop, so use a thread."""
    await asyncio.to_thread(_upgrade, database_url, revision)
